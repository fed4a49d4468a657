"""Typed schemas for every config group.

Hydra validates conf/ against these (they are registered in Hydra's ConfigStore by
``hydra_plugins/trt_pipeline``), and the stages validate params.yaml against them again, so a
wrong key or type fails with OmegaConf's message naming the key and the expected type or values.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Dict, List, Optional


@dataclass(frozen=True)
class Bound:
    """The numbers a setting allows. config_problems (checks.py) checks every field that carries one, so a
    setting's default, range and description sit together here, not restated elsewhere."""

    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False  # > instead of >=
    high_open: bool = False  # < instead of <=
    nullable: bool = False
    note: str = ""  # what a special value means, said with the range

    def allows(self, value) -> bool:
        if value is None:
            return self.nullable
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            text = f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        elif self.low is not None:
            text = f"{'>' if self.low_open else '>='} {self.low:g}"
        else:
            text = f"{'<' if self.high_open else '<='} {self.high:g}"
        return f"must be {'null or ' if self.nullable else ''}{text}" + (f" ({self.note})" if self.note else "")


def setting(default: Any = None, *, factory: Optional[Callable[[], Any]] = None, ge: Optional[float] = None, gt: Optional[float] = None,
            le: Optional[float] = None, lt: Optional[float] = None, nullable: bool = False, note: str = "", help: str = ""):
    """A field with its default (``factory`` for lists), a one-line description, and for numbers the range
    config_problems enforces (docs/settings.md is generated from these)."""
    metadata: Dict[str, Any] = {"help": help}
    if (ge, gt, le, lt) != (None, None, None, None):
        metadata["bound"] = Bound(low=gt if gt is not None else ge, high=lt if lt is not None else le, low_open=gt is not None,
                                  high_open=lt is not None, nullable=nullable, note=note)
    elif note:
        metadata["note"] = note
    return field(default_factory=factory, metadata=metadata) if factory is not None else field(default=default, metadata=metadata)



class Precision(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"
    int8 = "int8"
    fp8 = "fp8"


class ElementType(str, Enum):
    """What a precision converts tensors to (ONNX element type names)."""

    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"
    int8 = "int8"
    float8e4m3fn = "float8e4m3fn"


class PrecisionMode(str, Enum):
    passthrough = "passthrough"  # the FP32 graph as exported
    autocast = "autocast"  # ModelOpt AutoCast rewrites float tensors to fp16/bf16
    qdq = "qdq"  # explicit QuantizeLinear/DequantizeLinear from calibration


class Backend(str, Enum):
    onnxruntime = "onnxruntime"
    tensorrt = "tensorrt"
    tensorrt_rtx = "tensorrt_rtx"
    openvino = "openvino"
    aoti = "aoti"  # PyTorch AOTInductor: the model's PyTorch source compiled ahead of time


class Device(str, Enum):
    cpu = "cpu"
    cuda = "cuda"


class CpuIsa(str, Enum):
    """The instruction-set level a CPU target is built for (pipeline/evaluate/host.py maps each to the
    CPU flags that provide it)."""

    x86_64 = "x86_64"  # any x86-64 CPU
    avx2 = "avx2"
    vnni = "vnni"  # AVX512-VNNI or AVX-VNNI: 8-bit dot products
    amx = "amx"  # AMX-INT8 tile units


class QuantFormat(str, Enum):
    # u8 activations (asymmetric) / s8 weights: what ONNX Runtime's CPU kernels fuse to QLinearConv.
    ort_u8s8 = "ort_u8s8"
    # s8 symmetric activations, per-channel s8 weights, zero points 0, float bias: TensorRT's parser.
    trt_s8s8 = "trt_s8s8"


class ActivationRanges(str, Enum):
    """Where INT8 activation ranges come from."""

    static = "static"  # calibrated once on the calibration samples (Q/DQ in the ONNX)
    dynamic = "dynamic"  # measured per batch at run time (ONNX Runtime CPU targets only)


class CalibrationMethod(str, Enum):
    minmax = "minmax"
    entropy = "entropy"
    percentile = "percentile"


class ModelSource(str, Enum):
    digits_cnn = "digits_cnn"  # small CNN trained here on scikit-learn's digits
    torchvision = "torchvision"  # architecture by name; random weights unless weights_path
    hf_transformer = "hf_transformer"  # Hugging Face encoder from a local directory, mean-pooled
    onnx = "onnx"  # bring-your-own ONNX file


class GraphOptimizationLevel(str, Enum):
    disabled = "disabled"
    basic = "basic"
    extended = "extended"
    all = "all"


class ProfilingVerbosity(str, Enum):  # TensorRT's ProfilingVerbosity members, lower case
    none = "none"
    layer_names_only = "layer_names_only"
    detailed = "detailed"


class HardwareCompatibility(str, Enum):  # TensorRT's HardwareCompatibilityLevel members, lower case
    none = "none"
    ampere_plus = "ampere_plus"
    same_compute_capability = "same_compute_capability"


class DatasetSource(str, Enum):
    sklearn_digits = "sklearn_digits"  # built in: scikit-learn's handwritten digits
    photo_crops = "photo_crops"  # built in: crops of scikit-image's photographs
    stdlib_sentences = "stdlib_sentences"  # built in: standard-library docstring sentences
    image_folder = "image_folder"  # the user's images (path), preprocessed as the model expects
    tensor_files = "tensor_files"  # the user's tensors: one .npz keyed by input name, or a folder of one-sample .npz
    text_lines = "text_lines"  # the user's UTF-8 text, one sample per line, tokenized with `tokenizer`


class Task(str, Enum):
    classification = "classification"  # scores along class_axis: top-1 agreement (and accuracy with labels)
    embedding = "embedding"  # vectors: cosine and nearest-neighbour retrieval agreement
    sequence = "sequence"  # per-step scores (CTC recognizers): argmax agreement per step along class_axis
    detection = "detection"  # tensors gated per output; top-k agreement of the score output where named
    tensor = "tensor"  # any other output: per-output error bounds only


class ResizeMode(str, Enum):
    center_crop = "center_crop"  # scale the short side to fit, crop the centre (torchvision's eval transform)
    stretch = "stretch"  # resize to the size, aspect ratio not kept
    letterbox = "letterbox"  # scale to fit inside, pad the rest with pad_value (Ultralytics)


class ColorOrder(str, Enum):
    rgb = "rgb"
    bgr = "bgr"  # OpenCV-trained models (OpenVINO's reverse_input_channels)
    gray = "gray"  # one channel


class Layout(str, Enum):
    nchw = "nchw"
    nhwc = "nhwc"


@dataclass
class TensorSpec:
    name: str = "input"
    # -1 marks a dynamic axis (batch is always axis 0).
    shape: List[int] = field(default_factory=lambda: [-1, 3, 224, 224])
    dtype: str = "float32"
    # Names of the dynamic axes, in order (profiles refer to them); default: batch, then dim<i>.
    axes: List[str] = field(default_factory=list)
    # False: the input has no batch axis (a recurrent state, a scalar such as a sample rate): every
    # batch is fed the same stored value, and the model runs one sample at a time.
    batch: bool = True

    @property
    def fixed_batch(self) -> bool:
        """Axis 0 is a batch of exactly one (a model that cannot take more)."""
        return self.batch and bool(self.shape) and self.shape[0] == 1

    def axis_name(self, axis: int) -> str:
        dynamic = [i for i, d in enumerate(self.shape) if d < 0]
        if axis in dynamic and dynamic.index(axis) < len(self.axes):
            return self.axes[dynamic.index(axis)]
        return "batch" if axis == 0 else f"{self.name}_dim{axis}"


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 0.003


@dataclass
class OutputGate:
    """Bounds on one output's error against FP32 (null: not gated)."""

    min_cosine: Optional[float] = None  # mean per-sample cosine similarity
    max_rel_l2: Optional[float] = None  # ||candidate - reference|| / ||reference|| over the split
    max_abs_error: Optional[float] = None  # largest |candidate - reference|


@dataclass
class Gates:
    """Accuracy gates checked by the validate stage; null disables a gate."""

    max_accuracy_drop: Optional[float] = None  # points of task accuracy lost against FP32
    min_top1_agreement: Optional[float] = None  # fraction of samples (steps, for sequence) with FP32's top-1 class
    min_cosine: Optional[float] = None  # mean cosine similarity to FP32 outputs (the first output)
    min_retrieval_agreement: Optional[float] = None  # embeddings: same nearest neighbour as FP32
    min_topk_agreement: Optional[float] = None  # detection: overlap of the top-k score indices with FP32's
    # Every output not named in `outputs` (a wrecked second output must not pass unseen); BYO models set cosine >= 0.98.
    every_output: OutputGate = field(default_factory=OutputGate)
    outputs: Dict[str, OutputGate] = field(default_factory=dict)  # per output name, in place of every_output

    def for_output(self, name: str) -> OutputGate:
        return self.outputs.get(name, self.every_output)


@dataclass
class ProfileConfig:
    """One TensorRT optimization profile: min/opt/max value for each dynamic axis name."""

    min: Dict[str, int] = field(default_factory=lambda: {"batch": 1})
    opt: Dict[str, int] = field(default_factory=lambda: {"batch": 8})
    max: Dict[str, int] = field(default_factory=lambda: {"batch": 32})


@dataclass
class TransformerFusions:
    model_type: Optional[str] = None  # ONNX Runtime's transformer optimizer model type, e.g. bert; null: none
    num_heads: int = 0  # attention heads; 0: read from the graph (needs the exporter's Reshape pattern)
    hidden_size: int = 0  # 0: read from the graph
    # GELU as FastGelu (the tanh approximation, |error| < 1e-3) instead of erf: about a third less time
    # in that op on the CPU; the validation gates judge the effect against the exact FP32 model.
    gelu_approximation: bool = False


@dataclass
class SmoothQuant:
    alpha: Optional[float] = None  # migration strength, strictly between 0 and 1; null: off
    # Smooth only activations whose largest channel maximum is at least this many times the median:
    # without outlier channels the extra Mul costs time for little accuracy.
    min_channel_ratio: float = 0.0


@dataclass
class ModelConfig:
    source: ModelSource = ModelSource.torchvision
    task: Task = Task.classification
    class_axis: int = -1  # classification / sequence: the axis of the class scores (negative: from the end)
    score_output: Optional[str] = None  # detection: the output whose top-k indices must agree with FP32's
    top_k: int = 10  # detection: how many top scores per sample are compared
    architecture: Optional[str] = None  # torchvision name, e.g. resnet18
    # torchvision: optional state_dict; hf_transformer: model directory; onnx: the ONNX file.
    # A path, or pkg://package/subdir for files inside an installed package.
    weights_path: Optional[str] = None
    dataset: str = "digits"  # key into the dataset group
    num_classes: int = 10
    opset: int = 17
    inputs: List[TensorSpec] = field(default_factory=lambda: [TensorSpec()])
    outputs: List[str] = field(default_factory=lambda: ["logits"])
    seed: int = 0
    train: Optional[TrainConfig] = None
    # Batches of training data used to re-estimate BatchNorm statistics of random weights.
    bn_recalibration_batches: int = 0
    gates: Gates = field(default_factory=Gates)
    profiles: List[ProfileConfig] = field(default_factory=lambda: [ProfileConfig()])
    # Op types that get Q/DQ (empty: every op ONNX Runtime can quantize).
    quantize_op_types: List[str] = field(default_factory=list)
    # False: quantize only the inputs of those ops and keep their outputs float (transformers,
    # whose activations have outliers); True lets CNNs chain integer convolutions.
    quantize_outputs: bool = True
    # onnx source: make a fixed batch dimension dynamic (else a fixed batch is refused).
    dynamic_batch: bool = False
    # ONNX Runtime CPU targets: dynamic ranges suit transformers (per-batch ranges follow activation
    # outliers; no Q/DQ between fused kernels). Other targets always calibrate static Q/DQ.
    int8_activations: ActivationRanges = ActivationRanges.static
    # ONNX Runtime CPU targets: fuse with ONNX Runtime's transformer optimizer before quantizing
    # (Attention, EmbedLayerNormalization, BiasGelu), so attention projections quantize as one
    # QAttention.
    transformer_fusions: TransformerFusions = field(default_factory=TransformerFusions)
    # INT8/FP8: SmoothQuant for MatMuls with constant weights (activation outliers moved into the weights).
    smoothquant: SmoothQuant = field(default_factory=SmoothQuant)

    @property
    def one_sample_at_a_time(self) -> bool:
        """Inputs that fix a batch of one, or an input without a batch axis (whose one value, a state or
        a scalar, belongs to one sample): every stage then runs the model one sample at a time
        (calibration, validation, the benchmark sweep, serving)."""
        batched = [spec for spec in self.inputs if spec.batch]
        return bool(self.inputs) and (len(batched) < len(self.inputs) or all(spec.fixed_batch for spec in batched))

    def batch_size(self, wanted: int) -> int:
        """``wanted``, or 1 for a model run one sample at a time."""
        return 1 if self.one_sample_at_a_time else wanted

    @property
    def largest_batch(self) -> int:
        """The largest batch any of the model's profiles admits (1 for a model run one sample at a time)."""
        if self.one_sample_at_a_time:
            return 1
        names = {spec.axis_name(0) for spec in self.inputs if spec.batch}
        return max((size for profile in self.profiles for axis, size in profile.max.items() if axis in names), default=1)


@dataclass
class QuantizationConfig:
    format: QuantFormat = QuantFormat.ort_u8s8
    per_channel: bool = True
    # 7-bit weights: avoids int16 saturation in u8s8 kernels on x86 CPUs without VNNI.
    reduce_range: bool = False
    # Speed guard (ONNX Runtime CPU targets): a layer whose INT8 form is not at least this many
    # times faster than its float form stays float, each timed alone on real activations, side by
    # side, on a host with the target's ISA; the accuracy search then keeps in float the layers that
    # buy the most accuracy per millisecond. The decisions depend on the host's timings, so the
    # portable target leaves it null (byte-reproducible builds, layers ranked by accuracy alone).
    min_layer_speedup: Optional[float] = None


@dataclass
class BuildSettings:
    # ONNX Runtime: optimization level baked in offline.
    graph_optimization_level: GraphOptimizationLevel = GraphOptimizationLevel.extended
    intra_op_threads: int = setting(0, ge=0, note="0: ONNX Runtime's default, one per core", help="ONNX Runtime threads the build optimizes with")
    # ONNX Runtime graph transformers left out at build and load (recorded in the sidecar), e.g.
    # SkipLayerNormFusion, whose fused kernel is slower than Add + LayerNormalization on INT8 BERT.
    disabled_optimizers: List[str] = field(default_factory=list)
    # ONNX Runtime CUDA: provider options recorded in the sidecar and applied at load, e.g. prefer_nhwc "1"
    # (channels-last convolutions, Tensor Core friendly for FP16).
    cuda_provider_options: Dict[str, str] = field(default_factory=dict)
    # PyTorch AOTInductor: autotune GEMM/convolution kernels (minutes per model on a GPU; the result is cached by DVC)
    inductor_max_autotune: bool = False
    # TensorRT / TensorRT-RTX
    builder_optimization_level: int = setting(3, ge=0, le=5, help="TensorRT's builder optimization level (higher: longer builds, faster engines)")
    workspace_mib: int = setting(4096, ge=1, help="TensorRT's workspace memory pool limit")
    profiling_verbosity: ProfilingVerbosity = ProfilingVerbosity.detailed
    hardware_compatibility: HardwareCompatibility = HardwareCompatibility.none
    version_compatible: bool = False


@dataclass
class RuntimeSelection:
    """How a target that lists several runtimes picks one per build: each candidate is built, checked
    against the model's gates on the calibration search split and timed side by side at these batch
    sizes on this host; the fastest that passes is the artifact (Triton Model Navigator's approach)."""

    batch_sizes: List[int] = field(default_factory=lambda: [1, 32])
    gate_samples: int = setting(64, ge=1, help="search-split samples each candidate's outputs are gated on (validate checks all)")
    # A near-tie keeps the listed order, so reruns choose the same runtime.
    min_gain: float = setting(1.05, ge=1, note="1: the fastest always wins",
                              help="how much faster (geometric mean over the batch sizes) a later-listed candidate must be to replace an earlier one")


@dataclass
class TargetConfig:
    description: str = ""
    # The runtime calibrate prepares the model for, and the one built when ``runtimes`` is empty.
    backend: Backend = Backend.onnxruntime
    # Candidate runtimes measured at build, in order of preference ([]: ``backend`` alone). A list of
    # one pins that runtime.
    runtimes: List[Backend] = field(default_factory=list)
    selection: RuntimeSelection = field(default_factory=RuntimeSelection)
    device: Device = Device.cpu
    compute_capability: Optional[str] = None  # e.g. "9.0"; null for CPU
    precisions: List[Precision] = field(default_factory=lambda: [Precision.fp32])
    quantization: QuantizationConfig = field(default_factory=QuantizationConfig)
    build: BuildSettings = field(default_factory=BuildSettings)
    # The TensorRT release this target ships with, e.g. "10.3.0" (JetPack 6); null for TensorRT-RTX.
    tensorrt_version: Optional[str] = None
    cpu_isa: Optional[CpuIsa] = None  # CPU targets: the instruction set the build is for (null: GPU targets)

    @property
    def candidate_runtimes(self) -> List[Backend]:
        """The runtimes a build of this target may end up on."""
        return list(self.runtimes) or [self.backend]

    @property
    def tensorrt_major(self) -> Optional[int]:
        return int(self.tensorrt_version.split(".")[0]) if self.tensorrt_version else None


@dataclass
class PrecisionConfig:
    mode: PrecisionMode = PrecisionMode.passthrough
    # Element type of quantized tensors (qdq) or of converted float tensors (autocast).
    dtype: ElementType = ElementType.float32


@dataclass
class Preprocess:
    """How an image becomes the model's input (image_folder; photo_crops uses it with its own values).
    The keys users know from OpenVINO (mean_values, scale_values, reverse_input_channels) and
    Ultralytics (letterbox). Order: color, resize, * scale, - mean, / std, layout, dtype."""

    size: List[int] = field(default_factory=lambda: [224, 224])  # [H, W]; -1 keeps the image's size (rounded to multiple_of)
    multiple_of: int = 32  # where size is -1: the image's size rounded to a multiple of this
    resize: ResizeMode = ResizeMode.center_crop
    pad_value: float = 114.0  # letterbox padding, in 0-255 pixel units (before scale/mean/std)
    color: ColorOrder = ColorOrder.rgb
    scale: float = 0.00392156862745098  # multiplies the 0-255 pixels (1/255); 1.0 keeps raw 0-255
    mean: List[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])  # per channel, after scale ([] : none)
    std: List[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])  # per channel, after mean ([] : none)
    layout: Layout = Layout.nchw
    dtype: str = "float32"

    @property
    def channels(self) -> int:
        return 1 if self.color == ColorOrder.gray else 3

    def sample_shape(self, height: int, width: int) -> tuple:
        """One sample's shape for an image preprocessed to ``height`` x ``width``."""
        return (self.channels, height, width) if self.layout == Layout.nchw else (height, width, self.channels)


@dataclass
class DatasetConfig:
    source: DatasetSource = DatasetSource.sklearn_digits
    seed: int = 0
    num_validation: int = 497  # held-out samples, disjoint from training and calibration
    # Built-in sources: total generated or available. User sources: at most this many of the files
    # (null: all of them), a seeded draw when there are more.
    num_samples: Optional[int] = 1797
    input_name: str = "input"  # image datasets: the model input they feed
    tokenizer: Optional[str] = None  # text datasets: tokenizer directory or pkg://package/subdir
    max_length: int = 128  # text datasets: longest token sequence
    # User sources: a file or folder (a path, or pkg://package/subdir), a DVC dependency by content.
    path: Optional[str] = None
    # image_folder: null (no labels), "subfolders" (class folder names, sorted, are the class ids) or a
    # CSV file of `file,label` rows (file relative to path). tensor_files: the name of a labels array.
    labels: Optional[str] = None
    preprocess: Preprocess = field(default_factory=Preprocess)


@dataclass
class SearchConfig:
    """Accuracy-aware precision: when the quantized model misses its gates, keep the layers that add
    the most error in float, one at a time, until the gates pass or the budget is spent."""

    enabled: bool = setting(True, help="on a missed gate, keep the most error-adding layers in float, one at a time")
    max_excluded: int = setting(8, ge=0, help="budget: most layers kept in float")
    sensitivity_samples: int = setting(32, ge=1, help="calibration samples used to rank layers")
    # Drawn from the training split, disjoint from the calibration samples and from the validation split,
    # so validate stays an independent check (retrieval agreement depends on the sample count).
    num_samples: Optional[int] = setting(None, ge=1, nullable=True, note="null: as many as the validation split",
                                         help="samples the search checks its gates on")
    # 0.99 -> 0.9925 at 0.25, so the validation split, another sample of the same data, passes them too.
    headroom: float = setting(0.25, ge=0, lt=1, help="the search aims for gates tightened by this fraction of their distance to perfect")


@dataclass
class CalibrationConfig:
    """INT8/FP8 calibration: how activation ranges are estimated from the calibration samples, and the
    accuracy-aware search that keeps layers in float when the quantized model misses its gates."""

    method: CalibrationMethod = setting(CalibrationMethod.minmax, help="how activation ranges are estimated: minmax, entropy or percentile")
    num_samples: int = setting(500, ge=1, help="calibration samples drawn from the data not held out")
    seed: int = setting(0, help="seed of the calibration draw")
    batch_size: int = setting(16, ge=1, help="samples per statistics pass: bounds peak memory")
    percentile: float = setting(99.999, gt=0, le=100, help="percentile calibration: the share of activation magnitudes a range covers")
    num_bins: int = setting(2048, ge=128, note="entropy compares 128-bin quantized histograms", help="histogram bins (entropy, percentile)")
    exclude_nodes: List[str] = setting(factory=list, help="ONNX nodes kept in float, e.g. the list an accuracy search found")
    search: SearchConfig = field(default_factory=SearchConfig)


class GpuFigure(str, Enum):
    """One way of timing a GPU runner at one batch size (benchmark.gpu.figures)."""

    graph = "graph"  # inputs already on the GPU; a captured CUDA graph replayed
    eager = "eager"  # inputs already on the GPU; each run launched by the runtime
    overlapped = "overlapped"  # host inputs: batch n+1 uploaded and n-1 downloaded while n computes
    serial = "serial"  # host inputs: upload, compute, download one after another


@dataclass
class GpuBenchmarkConfig:
    """How CUDA targets are timed: a batch sweep long enough for NVML to see it, the CUDA-graph figure
    beside the eager one, and the figures with and without host transfers."""

    batch_sizes: List[int] = setting(factory=lambda: [1, 2, 4, 8, 16, 32, 64, 128, 256],
                                     help="the sweep; a model's stops at the largest batch of its profiles")
    # A graph that cannot be captured at a shape leaves that shape's headline to the next figure, and says why.
    figures: List[GpuFigure] = setting(factory=lambda: [GpuFigure.graph, GpuFigure.eager, GpuFigure.overlapped],
                                       help="the first is the headline (what plots and the report read); the others are timed beside it")
    warmup: int = setting(10, ge=1, note="a CUDA graph is captured while warming up", help="untimed runs of each runner first")
    # The headline runs until it has lasted min_seconds and done min_iterations (whichever comes
    # later), or for max_seconds at most; the other figures for beside_seconds.
    min_seconds: float = setting(2.0, ge=0, help="the headline figure's shortest run per batch size")
    min_iterations: int = setting(200, ge=1, help="the headline figure's fewest runs per batch size")
    beside_seconds: float = setting(0.5, ge=0, help="how long each other figure runs")
    max_seconds: float = setting(10.0, help="no figure runs longer (> 0, and at least min_seconds and beside_seconds)")
    streams: int = setting(1, ge=1, help="headline: concurrent runners, each on its own CUDA stream")
    nvml_min_samples: int = setting(20, ge=0, help="NVML samples per batch size the sampling period aims for; fewer is said in the row")


@dataclass
class BenchmarkConfig:
    """Latency and throughput of each build. CPU targets sweep batch_sizes in repeats x iterations;
    CUDA targets follow the gpu section."""

    batch_sizes: List[int] = setting(factory=lambda: [1, 8, 32], help="CPU targets' sweep; each size is its own row in the plots")
    warmup: int = setting(3, ge=0, help="untimed runs first")
    iterations: int = setting(10, ge=1, help="timed runs per repeat")
    repeats: int = setting(3, ge=1, help="independent timed loops (GPU: the timed runs cut in this many parts); their spread flags a noisy machine")
    max_seconds_per_batch: float = setting(10.0, gt=0, help="time budget per batch size (iterations may stop early)")
    spread_warning: float = setting(0.10, ge=0, help="warn when repeat medians differ by more than this fraction")
    threads: int = setting(0, ge=0, note="0: one per core", help="intra-op threads")
    # Timed side by side on the same device at the largest batch; the gate fails with both numbers.
    # Builds named in speed_gate_waived are measured, marked, not failed.
    min_quantized_speedup: Optional[float] = setting(1.0, gt=0, nullable=True, note="null: no gate",
                                                     help="how many times faster than its FP32 model every build below FP32 must be")
    speed_gate_waived: List[str] = setting(factory=list, help="builds whose slower-than-FP32 figure is recorded and marked, not failed")
    gpu: GpuBenchmarkConfig = field(default_factory=GpuBenchmarkConfig)


@dataclass
class BatchingSearch:
    """A bounded search, in the spirit of Triton Model Analyzer, for the dynamic-batching configuration
    with the highest throughput whose p99 meets serving.p99_budget_ms; package writes the winner."""

    enabled: bool = setting(False, help="search at package time (off: the configured values are written, pinned)")
    instances: List[int] = setting(factory=lambda: [1, 2], help="instance counts tried")
    max_queue_delay_us: List[int] = setting(factory=lambda: [1000, 5000, 20000], help="queue delays tried")
    preferred_batch_sizes: List[List[int]] = setting(factory=lambda: [[], [8, 16, 32]],
                                                     help="candidate lists tried; [] lets Triton form any batch up to max_batch_size")
    concurrency: List[int] = setting(factory=lambda: [4, 16, 32], help="client levels per candidate (stops at the first past the budget)")
    seconds_per_trial: float = setting(2.0, gt=0, help="load time per candidate and concurrency level")


@dataclass
class ServerScenario:
    """MLPerf's server scenario: requests arrive at random (Poisson) at a target rate; the highest rate
    whose p99 meets serving.p99_budget_ms, found by doubling then bisecting."""

    enabled: bool = setting(True, help="measure the highest Poisson arrival rate whose p99 meets the budget")
    probes: int = setting(5, ge=1, help="rates tried: doubling until one misses the budget, then bisecting")
    seconds_per_rate: float = setting(2.0, gt=0, help="load time per rate")


@dataclass
class ServingConfig:
    """Triton serving of each build: the model repository package writes and the load serve puts on it."""

    precisions: List[Precision] = setting(factory=lambda: [Precision.int8], help="the precisions whose builds `serve` serves")
    max_batch_size: int = setting(32, ge=1, help="largest batch the server forms (capped by the model's batch limits)")
    preferred_batch_sizes: List[int] = setting(factory=lambda: [8, 16, 32], help="batch sizes Triton's dynamic batcher prefers")
    max_queue_delay_us: int = setting(5000, ge=0, help="how long a request may wait for a batch to fill")
    instances: int = setting(1, ge=1, help="model instances (each runs one batch at a time)")
    intra_op_threads: int = setting(0, ge=0, note="0: one per core", help="ONNX Runtime threads per instance")
    gpus: List[int] = setting(factory=lambda: [0], help="CUDA targets: the GPUs each instance group runs on")
    cuda_graphs: bool = setting(True, help="TensorRT targets: Triton replays CUDA graphs in the native form")
    warmup_samples: int = setting(4, ge=0, help="validation samples the server runs before it reports ready")
    startup_timeout_s: float = setting(60.0, gt=0, help="how long the server may take to become ready")
    # Triton 2.51 has no such option and died on a 16 MB body
    http_max_request_mb: float = setting(15.0, gt=0, le=4096, help="HTTP bodies over this are refused (413) in front of Triton")
    agreement_samples: int = setting(64, ge=1, help="validation samples served and compared with the offline engine")
    # served vs offline outputs: |served - offline| <= atol + rtol * |offline|
    agreement_atol: float = setting(1e-4, ge=0, help="absolute tolerance of served against offline outputs")
    agreement_rtol: float = setting(1e-3, ge=0, help="relative tolerance of served against offline outputs")
    concurrency: List[int] = setting(factory=lambda: [1, 4], help="closed-loop sweep of single-sample requests")
    seconds_per_level: float = setting(3.0, gt=0, help="load time per concurrency level")
    p99_budget_ms: float = setting(200.0, gt=0, help="gate: client p99 at every concurrency level")
    batching_search: BatchingSearch = field(default_factory=BatchingSearch)
    server_scenario: ServerScenario = field(default_factory=ServerScenario)


@dataclass
class BuildEntry:
    """One cell of the build matrix: which model, on which target, at which precision."""

    model: str = "???"
    target: str = "???"
    precision: Precision = Precision.fp32
    dataset: str = "???"  # the model's dataset, so stages can name its params key
    data: str = "???"  # the dataset's files (a DVC dependency by content); built-in data: its module


@dataclass
class ModelEntry:
    """One selected model as the per-model stages need it (computed at compose time)."""

    dataset: str = "???"
    # The file (or folder, for an ONNX with external data) the model's weights come from: a DVC
    # dependency of prepare. Models with no such file point at prepare's own script.
    source: str = "???"
    # The data prepare reads (training, BatchNorm re-estimation): the dataset's files; prepare's own
    # script for a bring-your-own ONNX (prepare copies it and reads no data).
    data: str = "???"


@dataclass
class PipelineConfig:
    model: Dict[str, ModelConfig] = field(default_factory=dict)
    target: Dict[str, TargetConfig] = field(default_factory=dict)
    precision: Dict[str, PrecisionConfig] = field(default_factory=dict)
    dataset: Dict[str, DatasetConfig] = field(default_factory=dict)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)
    builds: Dict[str, BuildEntry] = field(default_factory=dict)
    models: Dict[str, ModelEntry] = field(default_factory=dict)
    servable: Dict[str, BuildEntry] = field(default_factory=dict)  # builds served on the embedded Triton (computed)
    artifacts_dir: str = "artifacts"
    metrics_dir: str = "metrics"
    plots_dir: str = "plots"


def option_value(option) -> str:
    """An enum option as its config string (typed configs give enums, plain YAML gives strings)."""
    return str(getattr(option, "value", option))


def as_plain(obj: Any) -> Any:
    """Dataclass/enum tree -> plain JSON-able structure (for hashing and sidecars)."""
    from dataclasses import asdict, is_dataclass

    if is_dataclass(obj):
        return as_plain(asdict(obj))
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, dict):
        return {str(k): as_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [as_plain(v) for v in obj]
    return obj
