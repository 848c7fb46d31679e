#!/usr/bin/env python3
"""Extracts the command-line flags a Megatron-LM release defines, from its source, into the
table `hetpar export megatron`'s flags are checked against (tests/export.rs).

    python3 tests/oracle/megatron_flags.py MEGATRON_LM_GIT_DIR core_v0.19.0 \
        > tests/oracle/golden/megatron-flags-core_v0.19.0.tsv

Two sources, as Megatron-LM's parser builds them: explicit `add_argument("--flag", ...)` calls
(megatron/training/arguments.py, pretrain_gpt.py, pretrain_vlm.py, the MIMO example), and the
fields of the dataclasses `ArgumentGroupFactory` turns into flags (`--field-name`; a boolean
that defaults to true as `--no-field-name` and `--disable-field-name`; `argparse_meta`'s
`arg_names` where a field gives them; excluded fields left out). Also every field of Megatron
Core's `TransformerConfig` and its bases as `model.FIELD`: the keys of a Megatron-Bridge
override's `model:` section. Reads the release with `git show`, so no checkout or Python
package of it is needed. Standard library only.
"""

import ast
import re
import subprocess
import sys

EXPLICIT = ["megatron/training/arguments.py", "pretrain_gpt.py", "pretrain_vlm.py"]


def git(repo, *args):
    return subprocess.run(["git", "-C", repo, *args], check=True, capture_output=True,
                          text=True).stdout


def explicit_flags(repo, tag, path):
    out = {}
    text = git(repo, "show", f"{tag}:{path}")
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
            for a in node.args:
                if isinstance(a, ast.Constant) and str(a.value).startswith("--"):
                    out.setdefault(a.value, f"{path}:{node.lineno}")
    return out


def literal_list(node, scope):
    if isinstance(node, ast.List):
        return [e.value for e in node.elts if isinstance(e, ast.Constant)]
    if isinstance(node, ast.Name):
        for n in ast.walk(scope):
            if isinstance(n, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id == node.id for t in n.targets):
                return literal_list(n.value, scope)
    return []


def factories(repo, tag):
    """(class name, excluded fields) of every ArgumentGroupFactory call in arguments.py."""
    tree = ast.parse(git(repo, "show", f"{tag}:megatron/training/arguments.py"))
    out = []
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef):
            continue
        for node in ast.walk(fn):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", "") ==
                    "ArgumentGroupFactory" and node.args and isinstance(node.args[0], ast.Name)):
                exclude = []
                for k in node.keywords:
                    if k.arg == "exclude":
                        exclude = literal_list(k.value, fn)
                out.append((node.args[0].id, set(exclude)))
    return out


def find_class(repo, tag, name):
    hits = git(repo, "grep", "-n", f"^class {name}\\b", tag, "--", "megatron").splitlines()
    if not hits:
        return None, None
    path = hits[0].split(":")[1]
    tree = ast.parse(git(repo, "show", f"{tag}:{path}"))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return path, node
    return None, None


def field_flags(repo, tag, name, exclude, seen):
    path, cls = find_class(repo, tag, name)
    if cls is None or name in seen:
        return {}
    seen.add(name)
    out = {}
    for base in cls.bases:
        if isinstance(base, ast.Name):
            out.update(field_flags(repo, tag, base.id, exclude, seen))
    for node in cls.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        field = node.target.id
        if field in exclude or "ClassVar" in ast.unparse(node.annotation):
            continue
        default, names, init = node.value, None, True
        if isinstance(default, ast.Call) and getattr(default.func, "id", "") == "field":
            default = None
            for k in default_kw(node.value):
                if k.arg == "default":
                    default = k.value
                elif k.arg == "init" and isinstance(k.value, ast.Constant):
                    init = k.value.value
                elif k.arg == "metadata":
                    names = arg_names(k.value)
        if not init:
            continue
        dashed = field.replace("_", "-")
        if names is None:
            is_bool = ast.unparse(node.annotation) == "bool"
            true = isinstance(default, ast.Constant) and default.value is True
            names = [f"--no-{dashed}", f"--disable-{dashed}"] if is_bool and true else [
                f"--{dashed}"]
        for n in names:
            out.setdefault(n, f"{path}:{node.lineno}")
    return out


def default_kw(call):
    return call.keywords


def arg_names(meta):
    try:
        value = ast.literal_eval(meta)
    except ValueError:
        return None
    names = value.get("argparse_meta", {}).get("arg_names") if isinstance(value, dict) else None
    return list(names) if names else None


def config_fields(repo, tag, name, seen):
    """Every dataclass field of `name` and its bases: the keys a Megatron-Bridge `model:`
    override sets (Megatron Core's configs, whether or not argparse exposes them)."""
    path, cls = find_class(repo, tag, name)
    if cls is None or name in seen:
        return {}
    seen.add(name)
    out = {}
    for base in cls.bases:
        if isinstance(base, ast.Name):
            out.update(config_fields(repo, tag, base.id, seen))
    for node in cls.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out.setdefault(node.target.id, f"{path}:{node.lineno}")
    return out


def main():
    repo, tag = sys.argv[1], sys.argv[2]
    commit = git(repo, "rev-list", "-n", "1", tag).strip()
    table = {}
    mimo = [p for p in git(repo, "ls-tree", "-r", "--name-only", tag, "examples/mimo").split()
            if p.endswith(".py")]
    for path in EXPLICIT + mimo:
        for flag, where in explicit_flags(repo, tag, path).items():
            table.setdefault(flag, (where, "explicit"))
    for name, exclude in factories(repo, tag):
        for flag, where in field_flags(repo, tag, name, exclude, set()).items():
            table.setdefault(flag, (where, f"field of {name}"))
    for field, where in config_fields(repo, tag, "TransformerConfig", set()).items():
        table.setdefault(f"model.{field}", (where, "Megatron Core config field"))
    print(f"# Megatron-LM {tag} ({commit}): flags its parsers define, and Megatron Core's "
          "model config fields (model.*), from tests/oracle/megatron_flags.py")
    for flag in sorted(table):
        where, how = table[flag]
        print(f"{flag}\t{where}\t{how}")


if __name__ == "__main__":
    main()
