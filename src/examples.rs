//! Examples embedded in the binary, so that `hetpar describe` runs with no input files.

/// The default model: LLaVA-1.5-7B imported from its Hugging Face config.
pub const MODEL: (&str, &str) = (
    "examples/models/llava-1.5-7b.json",
    include_str!("../examples/models/llava-1.5-7b.json"),
);

/// The default cluster: one node of 8 H100s.
pub const CLUSTER: (&str, &str) = (
    "examples/clusters/h100-8.json",
    include_str!("../examples/clusters/h100-8.json"),
);
