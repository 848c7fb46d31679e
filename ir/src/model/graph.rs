//! The built model: modules and boundaries in arenas with typed ids, a petgraph digraph between
//! them, and the training data resolved per encoder. Built only from a verified `ModelFile`.

use std::collections::BTreeMap;

use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::Direction;

use super::arch::{EmbeddingSpec, MlpSpec, PositionsSpec, TransformerSpec};
use super::data::{ItemTokens, TrainingData};
use super::file::{Landing, ModelFile, ModuleKind};
use crate::ids::{BoundaryId, ModuleId};

/// What a module computes, by kind.
#[derive(Clone, Debug, PartialEq)]
pub enum Body {
    Encoder {
        transformer: TransformerSpec,
        embedding: EmbeddingSpec,
        positions: PositionsSpec,
        tokens_per_item: u32,
        pre_norm: bool,
        /// A class row leads every item (position 0) and leaves no output row.
        class_token: bool,
        /// A norm after the last layer.
        final_norm: bool,
        /// The token id marking its rows in token ids, if the model says.
        token_id: Option<u32>,
    },
    Projector(MlpSpec),
    LanguageModel {
        transformer: TransformerSpec,
        vocab_size: u32,
        tied_embeddings: bool,
        positions: PositionsSpec,
    },
    Generator {
        transformer: TransformerSpec,
        out_features: Option<u32>,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Module {
    pub id: ModuleId,
    pub name: String,
    pub kind: ModuleKind,
    pub body: Body,
}

impl Module {
    /// The transformer stack, for every kind but projectors.
    pub fn transformer(&self) -> Option<&TransformerSpec> {
        match &self.body {
            Body::Encoder { transformer, .. }
            | Body::LanguageModel { transformer, .. }
            | Body::Generator { transformer, .. } => Some(transformer),
            Body::Projector(_) => None,
        }
    }

    /// Layers a pipeline splits: transformer layers, or the linears of a projector.
    pub fn layer_count(&self) -> u32 {
        match &self.body {
            Body::Projector(mlp) => mlp.widths.len().saturating_sub(1) as u32,
            _ => self.transformer().map_or(0, |t| t.layers),
        }
    }

    /// Width of the rows this module outputs.
    pub fn output_width(&self) -> u32 {
        match &self.body {
            Body::Encoder { transformer, .. } | Body::LanguageModel { transformer, .. } => {
                transformer.hidden
            }
            Body::Projector(mlp) => mlp.widths.last().copied().unwrap_or(0),
            Body::Generator {
                transformer,
                out_features,
            } => out_features.unwrap_or(transformer.hidden),
        }
    }

    /// Width of one row this module takes in through a boundary (`None`: it takes none).
    pub fn input_width(&self) -> Option<u32> {
        match &self.body {
            Body::Encoder { .. } => None,
            Body::Projector(mlp) => {
                Some(mlp.widths.first().copied().unwrap_or(0) / mlp.token_merge.max(1))
            }
            Body::LanguageModel { transformer, .. } | Body::Generator { transformer, .. } => {
                Some(transformer.hidden)
            }
        }
    }

    /// Input rows merged into one output row.
    pub fn token_merge(&self) -> u32 {
        match &self.body {
            Body::Projector(mlp) => mlp.token_merge.max(1),
            _ => 1,
        }
    }
}

/// An edge of the module graph.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Boundary {
    pub id: BoundaryId,
    pub name: String,
    pub from: ModuleId,
    pub to: ModuleId,
    pub landing: Landing,
    /// The module whose rows these are at the start: an encoder (its items) or the language
    /// model (its sequence).
    pub origin: ModuleId,
    /// Origin rows merged into one boundary row by projectors on the way.
    pub merge: u32,
    /// Width of one row.
    pub width: u32,
}

/// The verified model.
#[derive(Clone, Debug)]
pub struct ModelGraph {
    file: ModelFile,
    modules: Vec<Module>,
    boundaries: Vec<Boundary>,
    graph: DiGraph<ModuleId, BoundaryId>,
    topo: Vec<ModuleId>,
    language_model: ModuleId,
    data: TrainingData,
    items: BTreeMap<ModuleId, ItemTokens>,
    /// Per module: mean rows and mean attention (query, key) pairs per sample, computed once.
    means: Vec<(f64, f64)>,
}

impl ModelGraph {
    /// Assembles a graph from parts the verifier produced; see `verify::build`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn assemble(
        file: ModelFile,
        modules: Vec<Module>,
        boundaries: Vec<Boundary>,
        topo: Vec<ModuleId>,
        language_model: ModuleId,
        data: TrainingData,
        items: BTreeMap<ModuleId, ItemTokens>,
    ) -> Self {
        let mut graph = DiGraph::new();
        let nodes: Vec<NodeIndex> = modules.iter().map(|m| graph.add_node(m.id)).collect();
        for b in &boundaries {
            graph.add_edge(nodes[b.from.index()], nodes[b.to.index()], b.id);
        }
        let mut g = ModelGraph {
            file,
            modules,
            boundaries,
            graph,
            topo,
            language_model,
            data,
            items,
            means: Vec::new(),
        };
        g.means = g.modules.iter().map(|m| g.compute_means(m.id)).collect();
        g
    }

    fn compute_means(&self, m: ModuleId) -> (f64, f64) {
        let b = self.data.global_batch.max(1) as usize;
        let module = self.module(m);
        let pairs_of = |n: f64, causal: bool| if causal { n * (n + 1.0) / 2.0 } else { n * n };
        let causal = module
            .transformer()
            .is_some_and(|t| t.attention == super::arch::AttentionKind::Causal);
        let (mut rows, mut pairs) = (0.0, 0.0);
        for s in 0..b {
            let r = self.rows_of_sample(m, s) as f64;
            rows += r;
            pairs += match (&module.body, self.items(m)) {
                (Body::Encoder { .. }, Some(it)) => it
                    .items_of(s)
                    .iter()
                    .map(|&n| pairs_of(f64::from(n), causal))
                    .sum(),
                (Body::Projector(_), _) => 0.0,
                _ => pairs_of(r, causal),
            };
        }
        (rows / b as f64, pairs / b as f64)
    }

    /// Mean rows module `m` processes per sample.
    pub fn mean_rows_per_sample(&self, m: ModuleId) -> f64 {
        self.means.get(m.index()).map_or(0.0, |x| x.0)
    }

    /// Mean attention (query, key) pairs of module `m` per sample (causal: unmasked only).
    pub fn mean_pairs_per_sample(&self, m: ModuleId) -> f64 {
        self.means.get(m.index()).map_or(0.0, |x| x.1)
    }

    /// The file this graph was built from (for writing it back out).
    pub fn file(&self) -> &ModelFile {
        &self.file
    }

    pub fn name(&self) -> &str {
        &self.file.name
    }

    pub fn modules(&self) -> &[Module] {
        &self.modules
    }

    pub fn module(&self, id: ModuleId) -> &Module {
        &self.modules[id.index()]
    }

    pub fn module_by_name(&self, name: &str) -> Option<&Module> {
        self.modules.iter().find(|m| m.name == name)
    }

    pub fn boundaries(&self) -> &[Boundary] {
        &self.boundaries
    }

    pub fn boundary(&self, id: BoundaryId) -> &Boundary {
        &self.boundaries[id.index()]
    }

    /// Modules in a topological order (sources first; ties by name).
    pub fn topological_order(&self) -> &[ModuleId] {
        &self.topo
    }

    pub fn language_model(&self) -> ModuleId {
        self.language_model
    }

    pub fn data(&self) -> &TrainingData {
        &self.data
    }

    /// The items an encoder sees; `None` for other modules.
    pub fn items(&self, encoder: ModuleId) -> Option<&ItemTokens> {
        self.items.get(&encoder)
    }

    /// The encoder whose items module `m` processes: itself for an encoder, the encoder at the
    /// start of its rows for a projector; `None` for the language model and what follows it.
    /// Such modules run in encoder passes (`crate::shard`).
    pub fn item_origin(&self, m: ModuleId) -> Option<ModuleId> {
        let module = self.module(m);
        if module.kind.is_encoder() {
            return Some(m);
        }
        if module.kind != ModuleKind::Projector {
            return None;
        }
        let b = *self.incoming(m).first()?;
        let origin = self.boundary(b).origin;
        self.module(origin).kind.is_encoder().then_some(origin)
    }

    /// Boundaries entering `m`, in id order.
    pub fn incoming(&self, m: ModuleId) -> Vec<BoundaryId> {
        self.edges(m, Direction::Incoming)
    }

    /// Boundaries leaving `m`, in id order.
    pub fn outgoing(&self, m: ModuleId) -> Vec<BoundaryId> {
        self.edges(m, Direction::Outgoing)
    }

    fn edges(&self, m: ModuleId, dir: Direction) -> Vec<BoundaryId> {
        let mut v: Vec<BoundaryId> = self
            .graph
            .edges_directed(NodeIndex::new(m.index()), dir)
            .map(|e| *e.weight())
            .collect();
        v.sort();
        v
    }

    /// Rows a module processes for sample `s`: an encoder's tokens over all its items, a
    /// projector's output rows, the language model's sequence, a generator's input rows.
    pub fn rows_of_sample(&self, m: ModuleId, s: usize) -> u64 {
        let module = self.module(m);
        match module.kind {
            k if k.is_encoder() => self.items(m).map_or(0, |it| it.tokens_of(s)),
            ModuleKind::LanguageModel => u64::from(self.data.sequence_length),
            _ => {
                let input: u64 = self
                    .incoming(m)
                    .iter()
                    .map(|&b| self.boundary_rows_of_sample(b, s))
                    .sum();
                input / u64::from(module.token_merge())
            }
        }
    }

    /// Rows boundary `b` carries for sample `s`.
    pub fn boundary_rows_of_sample(&self, b: BoundaryId, s: usize) -> u64 {
        self.rows_of_sample(self.boundary(b).from, s)
    }

    /// Rows boundary `b` carries over the whole global batch.
    pub fn boundary_rows_per_batch(&self, b: BoundaryId) -> u64 {
        (0..self.data.global_batch as usize)
            .map(|s| self.boundary_rows_of_sample(b, s))
            .sum()
    }

    /// Bytes boundary `b` carries forward over the whole global batch (activations at the
    /// data's precision); the backward gradient has the same size.
    pub fn boundary_bytes_per_batch(&self, b: BoundaryId) -> u64 {
        self.boundary_rows_per_batch(b)
            * u64::from(self.boundary(b).width)
            * self.data.precision.activation_bytes()
    }
}
