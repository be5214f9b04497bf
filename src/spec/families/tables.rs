//! The built-in families: one table each of tensor-name templates, and
//! the registry [`FAMILIES`] that [`super::infer`] walks. A family with a
//! known structure is one more entry here.

/// How a family's tensors are laid out: which builder reads its table.
#[derive(Debug)]
pub enum Structure {
    /// Transformer blocks around one residual stream.
    Transformer(&'static TransformerTable),
    /// Stages of residual conv blocks (the stream's width changes at each
    /// stage's downsample shortcut).
    ResidualConv(&'static ResNetTable),
}

/// One built-in family.
#[derive(Debug)]
pub struct Family {
    /// Name used in messages (`… looks like a GPT-2 checkpoint but …`).
    pub name: &'static str,
    pub structure: Structure,
}

/// The built-in families, in the order they are tried.
pub static FAMILIES: &[Family] = &[
    Family {
        name: "LLaMA-family",
        structure: Structure::Transformer(&LLAMA),
    },
    Family {
        name: "GPT-2",
        structure: Structure::Transformer(&GPT2),
    },
    Family {
        name: "BERT/RoBERTa",
        structure: Structure::Transformer(&BERT),
    },
    Family {
        name: "torchvision ResNet",
        structure: Structure::ResidualConv(&RESNET),
    },
];

/// How a transformer family names its tensors. Every name is relative to
/// the model's base prefix (`model.`, `transformer.`, `bert.` …, found from
/// the layer names); a layer's names are relative to `{base}{layers}.{i}.`.
#[derive(Debug)]
pub struct TransformerTable {
    /// The layer list: `{base}{layers}.{i}.…`.
    pub layers: &'static str,
    /// A tensor name every layer has, after `{layers}.{i}`: the family's
    /// signature.
    pub detect: &'static str,
    /// Projections are Conv1D (GPT-2: weights stored `[in, out]`) instead
    /// of Linear (`[out, in]`).
    pub conv1d: bool,
    pub attention: Attention,
    /// The attention output projection.
    pub o: &'static str,
    /// The FFN's input projections, in order, and whether each must exist
    /// (a gate is optional: present in gated FFNs only).
    pub up: &'static [(&'static str, bool)],
    /// The FFN's output projection.
    pub down: &'static str,
    /// Norms inside a layer (weight and bias, when present).
    pub layer_norms: &'static [&'static str],
    /// Embedding tables (axis 1 is the stream), required then optional.
    pub embeddings: &'static [&'static str],
    pub optional_embeddings: &'static [&'static str],
    /// The LM head, outside the base model: the suffix of the base that
    /// names the base model (`model.` in `model.layers…` next to
    /// `lm_head.weight`).
    pub lm_head_outside: Option<&'static str>,
    /// A pooler reading the stream (its output is the model's output).
    pub pooler: Option<&'static str>,
    /// Tensors of a prediction head next to the base model (names relative
    /// to the prefix around it: `cls.` next to `bert.`), each taken when
    /// present, with what the residual permutation does to it.
    pub prediction_head: &'static [(&'static str, HeadTensor)],
    /// The norm after the last layer (or after the embeddings).
    pub final_norm: &'static str,
    pub positions: Positions,
}

/// What the residual permutation does to a prediction-head tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadTensor {
    /// A `[d, d]` transform reading and writing the stream basis: both axes.
    Transform,
    /// A vector of the stream (bias, norm): axis 0.
    Vector,
    /// A decoder reading the stream (`[vocab, d]`): axis 1.
    Decoder,
    /// Per vocabulary entry: untouched.
    Untouched,
}

/// Where Q, K and V come from.
#[derive(Debug)]
pub enum Attention {
    /// Three projections.
    Separate {
        q: &'static str,
        k: &'static str,
        v: &'static str,
    },
    /// One projection whose output axis holds Q, K and V in thirds.
    Fused(&'static str),
}

/// How positions enter attention: whether Q/K dimensions may be permuted.
#[derive(Debug)]
pub enum Positions {
    /// Rotary embeddings: Q/K dimensions never move.
    Rotary,
    /// Absolute (added to the embeddings): Q/K dimensions may move.
    Absolute,
    /// Absolute unless this `config.json` key says otherwise.
    FromConfig(&'static str),
}

/// Llama, Mistral, Qwen2 (and look-alikes): `…layers.i.self_attn.q_proj`.
pub static LLAMA: TransformerTable = TransformerTable {
    layers: "layers",
    detect: ".self_attn.q_proj.weight",
    conv1d: false,
    attention: Attention::Separate {
        q: "self_attn.q_proj",
        k: "self_attn.k_proj",
        v: "self_attn.v_proj",
    },
    o: "self_attn.o_proj",
    up: &[("mlp.gate_proj", false), ("mlp.up_proj", true)],
    down: "mlp.down_proj",
    layer_norms: &["input_layernorm", "post_attention_layernorm"],
    embeddings: &["embed_tokens"],
    optional_embeddings: &[],
    lm_head_outside: Some("model."),
    pooler: None,
    prediction_head: &[],
    final_norm: "norm",
    positions: Positions::Rotary,
};

/// GPT-2: `…h.i.attn.c_attn` (Conv1D, weights stored `[in, out]`).
pub static GPT2: TransformerTable = TransformerTable {
    layers: "h",
    detect: ".attn.c_attn.weight",
    conv1d: true,
    attention: Attention::Fused("attn.c_attn"),
    o: "attn.c_proj",
    up: &[("mlp.c_fc", true)],
    down: "mlp.c_proj",
    layer_norms: &["ln_1", "ln_2"],
    embeddings: &["wte", "wpe"],
    optional_embeddings: &[],
    lm_head_outside: Some("transformer."),
    pooler: None,
    prediction_head: &[],
    final_norm: "ln_f",
    positions: Positions::Absolute,
};

/// BERT / RoBERTa encoders: `…encoder.layer.i.attention.self.query`.
pub static BERT: TransformerTable = TransformerTable {
    layers: "encoder.layer",
    detect: ".attention.self.query.weight",
    conv1d: false,
    attention: Attention::Separate {
        q: "attention.self.query",
        k: "attention.self.key",
        v: "attention.self.value",
    },
    o: "attention.output.dense",
    up: &[("intermediate.dense", true)],
    down: "output.dense",
    layer_norms: &["attention.output.LayerNorm", "output.LayerNorm"],
    embeddings: &["embeddings.word_embeddings"],
    optional_embeddings: &[
        "embeddings.position_embeddings",
        "embeddings.token_type_embeddings",
    ],
    lm_head_outside: None,
    pooler: Some("pooler.dense"),
    // BertForMaskedLM / BertLMHeadModel (`cls.predictions`) and
    // RobertaForMaskedLM (`lm_head`): the decoder is usually tied to the
    // word embeddings and not stored.
    prediction_head: &[
        (
            "cls.predictions.transform.dense.weight",
            HeadTensor::Transform,
        ),
        ("cls.predictions.transform.dense.bias", HeadTensor::Vector),
        (
            "cls.predictions.transform.LayerNorm.weight",
            HeadTensor::Vector,
        ),
        (
            "cls.predictions.transform.LayerNorm.bias",
            HeadTensor::Vector,
        ),
        ("cls.predictions.decoder.weight", HeadTensor::Decoder),
        ("cls.predictions.decoder.bias", HeadTensor::Untouched),
        ("cls.predictions.bias", HeadTensor::Untouched),
        ("lm_head.dense.weight", HeadTensor::Transform),
        ("lm_head.dense.bias", HeadTensor::Vector),
        ("lm_head.layer_norm.weight", HeadTensor::Vector),
        ("lm_head.layer_norm.bias", HeadTensor::Vector),
        ("lm_head.decoder.weight", HeadTensor::Decoder),
        ("lm_head.decoder.bias", HeadTensor::Untouched),
        ("lm_head.bias", HeadTensor::Untouched),
    ],
    final_norm: "embeddings.LayerNorm",
    positions: Positions::FromConfig("position_embedding_type"),
};

/// How a residual conv family names its tensors (relative to the base
/// prefix found from the first block's first conv).
#[derive(Debug)]
pub struct ResNetTable {
    /// The stem conv and its norm.
    pub stem: (&'static str, &'static str),
    /// Stages are `{stage}{S}`, blocks `{stage}{S}.{B}`.
    pub stage: &'static str,
    /// A block's convs, in order (at least the first two exist) and the
    /// prefix of their norms (`bn1` goes with `conv1`).
    pub convs: &'static [&'static str],
    pub norm: &'static str,
    /// A block's shortcut conv and norm, where the stream changes width.
    pub downsample: (&'static str, &'static str),
    /// The classifier reading the last stage after global pooling.
    pub head: &'static str,
    /// The parameters of a norm that follow its channels.
    pub norm_params: &'static [&'static str],
}

/// torchvision's ResNets (BasicBlock and Bottleneck).
pub static RESNET: ResNetTable = ResNetTable {
    stem: ("conv1", "bn1"),
    stage: "layer",
    convs: &["conv1", "conv2", "conv3"],
    norm: "bn",
    downsample: ("downsample.0", "downsample.1"),
    head: "fc",
    norm_params: &["weight", "bias", "running_mean", "running_var"],
};
