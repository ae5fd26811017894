"""Configuration of the science core, as data (pydantic models).

The sweep file (fer_ray/orchestrate/spec.py) is built from these sections, so one schema validates
both a YAML sweep and a direct call from Python. Every model forbids unknown keys.

Units: image sizes in pixels; rotation in degrees; brightness/contrast/saturation as the maximum
relative change (0.2 = factor drawn from [0.8, 1.2]); learning rates per step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Angle = Literal["FL", "HL", "S", "HR", "FR"]
Session = Literal["A", "B"]
Arch = Literal["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
BACKBONE_BLOCKS: tuple[str, ...] = ("stem", "layer1", "layer2", "layer3", "layer4")


class Strict(BaseModel):
    """Base for every config section: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SyntheticConfig(Strict):
    """The bundled synthetic KDEF-format faces (the embedded default dataset)."""

    identities: int = Field(20, ge=2, le=99, description="people per gender (F01.., M01..)")
    sessions: list[Session] = ["A", "B"]
    angles: list[Angle] = ["S"]
    width: int = Field(112, ge=16, description="JPEG width in px (KDEF is 562)")
    height: int = Field(152, ge=16, description="JPEG height in px (KDEF is 762)")
    seed: int = 0
    feature_scale: float = Field(
        1.0,
        ge=0.5,
        le=2.0,
        description="size of the eyes, brows and mouth (shapes, movements, strokes) relative to the head; > 1: expressions read at 32 px",
    )


#: How each ``split.by`` divides people, as every run and report labels it.
PROTOCOL_LABELS = {"identity": "subject-disjoint", "image": "subject-dependent (image-level split)"}


class SplitConfig(Strict):
    """How images are divided into train / val / test.

    by=identity (default): no person is on two sides. by=image: the reference study's subject-dependent protocol;
    every report labels it so.
    """

    by: Literal["identity", "image"] = "identity"
    val: float = Field(0.15, ge=0.0, lt=1.0, description="fraction of identities (or images)")
    test: float = Field(0.15, gt=0.0, lt=1.0, description="fraction of identities (or images)")
    seed: int = Field(0, description="fixes the split; independent of the training seed")

    @property
    def protocol(self) -> str:
        """The label every run and report carries: 'subject-disjoint' or 'subject-dependent (...)'."""
        return PROTOCOL_LABELS[self.by]

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> SplitConfig:
        if self.val + self.test >= 1.0:
            raise ValueError(f"split.val + split.test must be < 1 (got {self.val} + {self.test}); nothing would be left to train on")
        return self


class RadiateConfig(Strict):
    """RADIATE layout: image files under ``root`` and one metadata CSV (see README)."""

    metadata: str = Field("metadata.csv", description="CSV path, relative to data.root unless absolute")
    #: RADIATE expression label -> KDEF class; labels not in the map are dropped and counted.
    label_map: dict[str, str] = {
        "fear": "afraid",
        "afraid": "afraid",
        "anger": "angry",
        "angry": "angry",
        "disgust": "disgusted",
        "disgusted": "disgusted",
        "happy": "happy",
        "happiness": "happy",
        "neutral": "neutral",
        "sad": "sad",
        "sadness": "sad",
        "surprise": "surprised",
        "surprised": "surprised",
    }


class DataConfig(Strict):
    """Which images, at which resolution, split how."""

    dataset: Literal["synthetic", "kdef", "radiate", "folder"] = "synthetic"
    root: Path | None = Field(None, description="dataset folder; synthetic: None = the cache folder")
    image_size: int = Field(64, ge=16, le=1024, description="square side in px after resizing")
    angles: list[Angle] | None = Field(None, description="KDEF angles to keep; None = all")
    sessions: list[Session] | None = Field(None, description="KDEF sessions to keep; None = all")
    train_fraction: float = Field(1.0, gt=0.0, le=1.0, description="fraction of training identities used (nested across values)")
    split: SplitConfig = SplitConfig()
    synthetic: SyntheticConfig = SyntheticConfig()
    radiate: RadiateConfig = RadiateConfig()
    identity_pattern: str | None = Field(None, description="folder datasets: regex with a named group 'identity' applied to file names")
    cache_dir: Path | None = Field(None, description="tensor cache; None = $FER_RAY_CACHE or ~/.cache/fer_ray")

    @model_validator(mode="after")
    def _real_datasets_need_a_root(self) -> DataConfig:
        if self.dataset != "synthetic" and self.root is None:
            raise ValueError(f"data.root is required for data.dataset={self.dataset!r}")
        return self


class AugmentConfig(Strict):
    """Training-time augmentation applied to batches of [0,1] tensors on the trial's device."""

    enabled: bool = True
    rotation_deg: float = Field(10.0, ge=0.0, le=180.0, description="max |rotation| in degrees")
    hflip: bool = True
    brightness: float = Field(0.2, ge=0.0, le=1.0)
    contrast: float = Field(0.2, ge=0.0, le=1.0)
    saturation: float = Field(0.2, ge=0.0, le=1.0)


class ModelConfig(Strict):
    """ResNet backbone + new dense head. Inputs are [0,1] images; ImageNet normalisation is inside."""

    arch: Arch = "resnet18"
    weights: str = Field("none", description="'imagenet', 'none', or a path to a state-dict file")
    head: list[int] = Field([256], description="hidden widths of the dense head ([] = linear)")
    dropout: float = Field(0.3, ge=0.0, lt=1.0)
    trainable: str = Field("all", description="'none', 'all', or '+'-joined blocks, e.g. 'layer4' or 'layer3+layer4'")
    zero_init_residual: bool = Field(
        False,
        description="random init (weights: none): zero the last BatchNorm of every residual block (torchvision's "
        "zero_init_residual), so deep ResNets start as shallow ones; loaded weights replace it",
    )

    @field_validator("trainable")
    @classmethod
    def _known_blocks(cls, value: str) -> str:
        if value in ("none", "all"):
            return value
        unknown = [b for b in value.split("+") if b not in BACKBONE_BLOCKS]
        if unknown:
            raise ValueError(f"unknown backbone block(s) {unknown}; choose 'none', 'all' or '+'-joined names from {list(BACKBONE_BLOCKS)}")
        return value

    @field_validator("head")
    @classmethod
    def _positive_widths(cls, value: list[int]) -> list[int]:
        if any(w <= 0 for w in value):
            raise ValueError(f"head widths must be positive, got {value}")
        return value


class TrainConfig(Strict):
    """Optimisation of one fine-tuning run."""

    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0.0, le=10.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD only")
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    warmup_epochs: int = Field(
        0,
        ge=0,
        le=1000,
        description="linear lr warm-up over the first steps of this many epochs: step k of the n warm-up steps "
        "uses (k+1)/n of the schedule's lr (0 = none)",
    )
    epochs: int = Field(10, ge=1, le=1000)
    images_per_epoch: int | None = Field(
        None,
        ge=2,
        description="training images drawn per epoch: passes over the training split, each reshuffled, cut at this "
        "many (None = one pass). Equal steps for every training-set size (a dataset-fraction sweep)",
    )
    batch_size: int = Field(32, ge=2, description="images per step; at least 2 (BatchNorm in training mode needs two)")
    patience: int | None = Field(5, ge=1, description="early stopping on val_acc; None = off")
    seed: int = 0
    augment: AugmentConfig = AugmentConfig()


class GeneratorConfig(Strict):
    """Size of the U-Net generator and how it is trained (learning rate per Adam step)."""

    width: int = Field(16, ge=4, le=256, description="channels of the first stage (doubled at each of 3 stages)")
    epochs: int = Field(30, ge=1, le=10000, description="an epoch: every training image once as the source")
    batch_size: int = Field(8, ge=2, description="small batches: many Adam steps per CPU-second")
    lr: float = Field(3e-3, gt=0.0, le=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    l1_weight: float = Field(1.0, ge=0.0, description="weight of the L1 loss to the real target photo")
    l2_weight: float = Field(10.0, ge=0.0, description="weight of the squared error (dense gradients where L1's sign gradient stalls)")
    edge_weight: float = Field(0.0, ge=0.0, description="weight of the L1 loss between image gradients (sharper mouth/brow edges)")
    identity_fraction: float = Field(
        0.15, ge=0.0, le=1.0, description="share of training pairs whose target is the source's own expression"
    )
    prior: bool = Field(True, description="add the expression prior: target mean face minus the critic-weighted source mean face")
    expression_weight: float = Field(
        0.0,
        ge=0.0,
        description="weight of the cross-entropy of the frozen expression critic on the output with the target label",
    )
    critic_epochs: int = Field(40, ge=1, le=10000, description="epochs of the expression critic (training images)")
    critic_width: int = Field(16, ge=4, le=256, description="channels of the critic's first stage")
    seed: int = 0
