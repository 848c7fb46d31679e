//! The named rules that parsers and verifiers enforce. Every diagnostic names one; the
//! verifier's module docs (`crate::verify`) say where each is checked. `Rule::ALL` lets a test
//! prove that every rule has a case that triggers it.

macro_rules! rules {
    ($($variant:ident = $id:literal : $doc:literal,)*) => {
        /// A rule of hetpar's input formats. The id is stable and shown in every message.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Rule {
            $(#[doc = $doc] $variant,)*
        }

        impl Rule {
            /// Every rule, in declaration order.
            pub const ALL: &'static [Rule] = &[$(Rule::$variant,)*];

            /// The stable id, such as `layout.tp_divides_heads`.
            pub fn id(self) -> &'static str {
                match self { $(Rule::$variant => $id,)* }
            }

            /// One line saying what the rule requires.
            pub fn description(self) -> &'static str {
                match self { $(Rule::$variant => $doc,)* }
            }
        }
    };
}

rules! {
    FileRead = "file.read": "The file exists and reads as UTF-8 text (checked where files are read: the CLI).",
    JsonSyntax = "json.syntax": "The file is well-formed JSON.",
    JsonType = "json.type": "Every field has the expected type and every required field is present.",
    JsonUnknownField = "json.unknown_field": "No field is present that the format does not define.",
    FormatKind = "format.kind": "The top-level `kind` names the expected file kind (model, cluster or plan).",
    FormatVersion = "format.version": "`format_version` is one this hetpar reads.",
    ModelModules = "model.modules": "A model has at least one module and exactly one language model.",
    ModulePart = "module.part": "A module has exactly the parts its kind needs (a transformer for encoders, an MLP for projectors, ...).",
    ArchPositive = "arch.positive": "Sizes (layers, hidden, heads, FFN, vocabulary, widths, patch sizes) are at least 1, and those that drive work at most their limits (docs/model-format.md, \"Limits\").",
    ArchHeads = "arch.heads": "Hidden divides by heads when no head size is given, and KV heads divide heads.",
    ArchReal = "arch.real": "Real-valued architecture fields (norm_eps, rope_scaling) are finite and positive, and a Llama 3 rescaling has high_freq_factor > low_freq_factor.",
    ArchMoe = "arch.moe": "A mixture of experts has 1 <= top_k <= experts and a layer frequency of at least 1.",
    BoundaryModules = "boundary.modules": "A boundary joins two different, existing modules.",
    BoundaryDuplicate = "boundary.duplicate": "Boundary names are unique and no two boundaries join the same pair.",
    BoundaryWidth = "boundary.width": "The width of the rows a boundary carries matches what its destination takes in.",
    BoundaryLanding = "boundary.landing": "Rows land at placeholders only in a language model, and they trace back to exactly one encoder.",
    GraphCycle = "graph.cycle": "The module graph has no cycle.",
    GraphConnected = "graph.connected": "Every encoder and projector reaches the language model.",
    DataPositive = "data.positive": "Global batch, sequence length, item and token counts are at least 1, and at most their limits (global batch 2^20 samples, sequence 2^24 tokens, 2^16 items per sample; docs/model-format.md, \"Limits\").",
    DataEncoders = "data.encoders": "Every encoder has exactly one entry in `data.encoders` and every entry names an encoder.",
    DataItems = "data.items": "An encoder's items are given either as `items_per_sample` (+ `tokens_per_item`) or as a `per_sample` list with one entry per sample of the global batch.",
    DataTokenMerge = "data.token_merge": "Tokens per item divide by the token merge of the projector the rows pass through.",
    DataSequence = "data.sequence": "The rows every sample's items place into the language model fit its sequence length.",
    DataPositions = "data.positions": "Tokens per item fit an encoder's learned position table.",
    ClusterPositive = "cluster.positive": "Nodes and GPUs per node are at least 1, and the cluster has at most 2^24 GPUs.",
    ClusterGpu = "cluster.gpu": "Every GPU and link override is a finite number above 0 (an unknown GPU model is a json.type error listing the built-in ones).",
    PlanModel = "plan.model": "The plan's `model` name, when given, matches the model it is checked against.",
    PlanCluster = "plan.cluster": "The plan's `cluster` name, when given, matches the cluster it is checked against.",
    PlanClusterSize = "plan.cluster_size": "The plan's `cluster_gpus`, when given, is the GPU count of the cluster it is checked against (warning: a cluster that kept its name and changed its size).",
    PlanModules = "plan.modules": "The plan has an entry for every module of the model and for nothing else.",
    LayoutPositive = "layout.positive": "Every degree (tp, cp, pp, dp, ep, vpp) and the micro-batch size are at least 1.",
    LayoutDegrees = "layout.degrees": "tp x cp x pp x dp equals the module's rank count (dp is derived when omitted).",
    LayoutTp = "layout.tp": "tp divides heads, KV heads and the FFN hidden size (for projectors: every hidden width).",
    LayoutLayers = "layout.layers": "layers >= pp x vpp (at most 2^16 chunks), and without `stage_layers` pp x vpp divides layers.",
    LayoutStageLayers = "layout.stage_layers": "`stage_layers` has pp x vpp entries, each at least 1, summing to the layer count.",
    LayoutVpp = "layout.vpp": "Virtual pipeline chunks (vpp > 1) need pp > 1.",
    LayoutEp = "layout.ep": "ep > 1 needs a mixture of experts, ep divides the experts, and ep divides dp x cp.",
    LayoutSequenceParallel = "layout.sequence_parallel": "Sequence parallel needs tp > 1.",
    LayoutTpCommOverlap = "layout.tp_comm_overlap": "Tensor-parallel communication overlap needs sequence parallel (and so tp > 1), as Megatron-LM's `--tp-comm-overlap` does.",
    LayoutCp = "layout.cp": "2 x cp divides the sequence a module attends over (the LLM sequence, or every item's tokens for an encoder); projectors take cp = 1.",
    LayoutBatch = "layout.batch": "dp x micro_batch_size divides the global batch.",
    LayoutRecompute = "layout.recompute": "`recompute.layers` is given only with a selective or full policy and is at most the layers of a stage.",
    PlacementRanks = "placement.ranks": "Ranks are given either as `offset` + `count` or as a non-empty `list`.",
    PlacementRange = "placement.range": "Every rank lies inside the cluster (0 <= rank < nodes x gpus_per_node).",
    PlacementUnused = "placement.unused": "Every GPU of the cluster runs some module (warning: a plan that leaves GPUs idle).",
    PlacementDuplicate = "placement.duplicate": "A module's rank list names no rank twice.",
    PlacementAxisOrder = "placement.axis_order": "`axis_order` is a permutation of tp, cp, dp, pp.",
    PlacementOverlap = "placement.overlap": "Placements are colocated (identical rank sets) or disjoint, or every module sits inside the language model's ranks under a colocated schedule; other partial overlaps are representable but no schedule runs them (warning).",
    ScheduleKind = "schedule.kind": "The schedule kind fits the placement: colocated kinds need identical rank sets, pipeline kinds need disjoint ones.",
    ScheduleInterleaved = "schedule.interleaved": "vpp > 1 on some module if and only if the schedule is interleaved, and such a module's micro-batches per step are a multiple of its pp.",
    ScheduleChunk = "schedule.chunk": "`encoder_chunk` (language-model micro-batches per encoder pass) is at least 1 and at most the micro-batches of a step; `colocated_chunked` needs it, `colocated_three_phase` takes none.",
    ScheduleColocatedPp = "schedule.colocated_pp": "The per-micro-batch colocated schedule needs pp = 1 on every module.",
    ScheduleMicroBatches = "schedule.micro_batches": "The language model and every module after it split the global batch into the same number of micro-batches (global_batch / (dp x micro_batch_size)), so that micro-batch j means the same samples everywhere; encoders and projectors take no micro_batch_size (their items are dealt per encoder pass).",
    ScheduleGroups = "schedule.groups": "In a pipeline schedule, modules on the same ranks (an encoder with its projector) run unpipelined (pp = vpp = 1).",
}

impl serde::Serialize for Rule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.id())
    }
}
