"""One drawable lesion per CheXpert finding: its random parameters and its effect on T.

A lesion acts on the attenuation model of :mod:`storage.synthetic.phantom` in up to three
ways (:class:`FindingEffect`):

- ``occupancy`` o in [0, 1]: fluid or tissue replaces that fraction of the aerated lung
  (effusion, consolidation, edema, atelectasis, nodule, enlarged heart or mediastinum);
- ``marking_loss`` l in [0, 1]: vascular markings vanish (pneumothorax: collapsed lung);
- ``additive``: attenuation added or removed directly (tubes and lines, pleural line,
  calcified plaque, fracture gap and callus).

Parameters are drawn once per STUDY in lung-relative coordinates (side, u medial->lateral,
v apex->base, see :meth:`LungField.point`), so every image of the study shows the finding at
the same anatomical place whatever its pose, size or view. All profiles have compact
support, so the change is confined to where the effect is non-zero (= the mask).

Lateral views render what a lateral radiograph shows well: heart size, effusion (posterior
costophrenic angle), parenchymal opacities, nodules and devices. Pneumothorax, enlarged
mediastinum, rib fracture and pleural thickening return an empty effect there (their mask
channel is empty on laterals although the study label is positive).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, Protocol

import numpy as np

from storage.synthetic.fields import (
    NoiseField,
    bezier_path,
    compact_bump,
    ellipse_radius,
    flat_disc,
    polyline_distance,
    smoothstep,
    tube_profile,
)
from storage.synthetic.phantom import LungField, ViewGeometry

# Minimum |change| in attenuation units that counts as "changed" for the mask: ~1% of the
# soft-tissue/air contrast, below the pixel noise; compact profiles leave almost nothing
# below it.
MASK_THRESHOLD = 0.008


@dataclass(frozen=True)
class FindingEffect:
    occupancy: np.ndarray | None = None
    marking_loss: np.ndarray | None = None
    additive: np.ndarray | None = None

    def standalone_change(self, geom: ViewGeometry) -> np.ndarray | None:
        """Change of T this finding makes to the NORMAL image (no other findings):
        dT = A o (air - markings) - A l markings + additive. None when nothing changes."""
        change: np.ndarray | None = None
        a0 = geom.air_base
        if self.occupancy is not None:
            change = a0 * self.occupancy * (geom.anatomy.air - geom.markings)
        if self.marking_loss is not None:
            lost = -a0 * self.marking_loss * geom.markings
            change = lost if change is None else change + lost
        if self.additive is not None:
            change = self.additive if change is None else change + self.additive
        return change

    def mask(self, geom: ViewGeometry) -> np.ndarray:
        """uint8 mask of the pixels this finding changes (see :data:`MASK_THRESHOLD`)."""
        change = self.standalone_change(geom)
        if change is None:
            return np.zeros(geom.shape, dtype=np.uint8)
        return (np.abs(change) > MASK_THRESHOLD).astype(np.uint8)


NO_EFFECT = FindingEffect()


class Lesion(Protocol):
    """A finding instance: drawn per study, drawn on every image of the study."""

    label: ClassVar[str]

    @property
    def side(self) -> int:
        """-1 patient right, +1 patient left, 0 bilateral or midline (used by the report)."""
        ...

    def effect(self, geom: ViewGeometry) -> FindingEffect: ...


def _side(rng: np.random.Generator) -> int:
    return -1 if rng.random() < 0.5 else 1


def _texture(seed: int, correlation: float, geom: ViewGeometry) -> np.ndarray:
    return NoiseField.draw(np.random.default_rng(seed), correlation, grid=96).sample(geom.X, geom.Y)


# --- heart and mediastinum ------------------------------------------------------------


@dataclass(frozen=True)
class Cardiomegaly:
    """Enlarged cardiac silhouette: cardiothoracic ratio rises from ~0.45 to ~0.6."""

    label: ClassVar[str] = "Cardiomegaly"
    scale: float

    @staticmethod
    def draw(rng: np.random.Generator) -> Cardiomegaly:
        return Cardiomegaly(scale=float(rng.uniform(1.30, 1.48)))

    @property
    def side(self) -> int:
        return 0

    def effect(self, geom: ViewGeometry) -> FindingEffect:
        normal = geom.heart.occupancy(geom.X, geom.Y, geom.edge)
        big = geom.heart.occupancy(geom.X, geom.Y, geom.edge, scale=self.scale)
        # (1 - h0)(1 - o) = 1 - h1: the extra heart expressed as occupancy of what was lung
        occupancy = np.clip((big - normal) / (1.0 - normal + 1e-3), 0.0, 1.0)
        return FindingEffect(occupancy=occupancy)


@dataclass(frozen=True)
class EnlargedCardiomediastinum:
    """Widened upper mediastinum (vascular pedicle / mass); frontal views only."""

    label: ClassVar[str] = "Enlarged Cardiomediastinum"
    widen: float

    @staticmethod
    def draw(rng: np.random.Generator) -> EnlargedCardiomediastinum:
        return EnlargedCardiomediastinum(widen=float(rng.uniform(1.9, 2.5)))

    @property
    def side(self) -> int:
        return 0

    def effect(self, geom: ViewGeometry) -> FindingEffect:
        if geom.mediastinum is None:
            return NO_EFFECT
        normal = geom.mediastinum.occupancy(geom.X, geom.Y, geom.edge)
        wide = geom.mediastinum.occupancy(geom.X, geom.Y, geom.edge, widen=self.widen)
        occupancy = np.clip((wide - normal) / (1.0 - normal + 1e-3), 0.0, 1.0)
        return FindingEffect(occupancy=occupancy)


# --- pleura ---------------------------------------------------------------------------


def _lateral_fraction(lung: LungField, X: np.ndarray) -> np.ndarray:
    """0 at the medial (lateral view: anterior) end of the lung, 1 at the outer end."""
    inner = lung.cx - lung.outward * lung.a
    return np.clip((X - inner) * lung.outward / (2.0 * lung.a), 0.0, 1.0)


@dataclass(frozen=True)
class PleuralEffusion:
    """Dependent pleural fluid: fills the lung base with a meniscus that climbs laterally
    (posteriorly on the lateral view), blunting the costophrenic angle and effacing the
    hemidiaphragm. ``heights`` per side: fraction of the lung height filled laterally."""

    label: ClassVar[str] = "Pleural Effusion"
    heights: tuple[tuple[int, float], ...]
    density: float

    @staticmethod
    def draw(rng: np.random.Generator) -> PleuralEffusion:
        sides = (-1, 1) if rng.random() < 0.3 else (_side(rng),)
        return PleuralEffusion(
            heights=tuple((s, float(rng.uniform(0.22, 0.5))) for s in sides),
            density=float(rng.uniform(0.85, 0.97)),
        )

    @property
    def side(self) -> int:
        return 0 if len(self.heights) > 1 else self.heights[0][0]

    def effect(self, geom: ViewGeometry) -> FindingEffect:
        occupancy = np.zeros(geom.shape, dtype=np.float32)
        sides = [(0, max(h for _, h in self.heights))] if geom.view == "LATERAL" else self.heights
        for side, height in sides:
            lung = geom.lung(side)
            u = _lateral_fraction(lung, geom.X)
            costophrenic_y = lung.dome(np.asarray(lung.cx + lung.outward * 0.9 * lung.a))
            span = lung.dome_y - lung.apex_y
            # meniscus: highest at the chest wall (u = 1), lower medially
            surface = costophrenic_y - height * span * (0.4 + 0.6 * u * u)
            fluid = smoothstep(surface - 0.01, surface + 0.05, geom.Y)
            this_lung = lung.occupancy(geom.X, geom.Y, geom.edge)
            occupancy = np.maximum(occupancy, self.density * fluid * this_lung)
        return FindingEffect(occupancy=occupancy)


@dataclass(frozen=True)
class PleuralOther:
    """Pleural thickening along the lateral chest wall with calcified plaques (frontal)."""

    label: ClassVar[str] = "Pleural Other"
    pleural_side: int
    v_center: float
    half_height: float
    thickness: float

    @staticmethod
    def draw(rng: np.random.Generator) -> PleuralOther:
        return PleuralOther(
            pleural_side=_side(rng),
            v_center=float(rng.uniform(0.35, 0.6)),
            half_height=float(rng.uniform(0.22, 0.32)),
            thickness=float(rng.uniform(0.13, 0.2)),
        )

    @property
    def side(self) -> int:
        return self.pleural_side

    def effect(self, geom: ViewGeometry) -> FindingEffect:
        if geom.view == "LATERAL":
            return NO_EFFECT
        lung = geom.lung(self.pleural_side)
        r = lung.radius(geom.X, geom.Y)
        _, y0 = lung.point(0.9, self.v_center)
        span = lung.dome_y - lung.apex_y
        along = compact_bump((geom.Y - y0) / (self.half_height * span))
        outer = smoothstep(-0.2 * lung.a, 0.2 * lung.a, (geom.X - lung.cx) * lung.outward)
        rim = smoothstep(1.0 - self.thickness, 1.0 - self.thickness + 0.05, r)
        occupancy = 0.9 * rim * along * outer
        plaque = np.zeros(geom.shape, dtype=np.float32)
        for dv in (-0.4, 0.35):
            x, y = lung.point(0.97, self.v_center + dv * self.half_height)
            plaque += flat_disc(ellipse_radius(geom.X, geom.Y, x, y, 0.035, 0.07), 0.4)
        return FindingEffect(occupancy=occupancy, additive=0.12 * plaque * geom.body)


@dataclass(frozen=True)
class Pneumothorax:
    """Air between lung and chest wall at the apex and lateral edge: no lung markings
    outside a thin visceral pleural line, slightly more lucent (frontal views)."""

    label: ClassVar[str] = "Pneumothorax"
    ptx_side: int
    depth: float  # rim thickness in normalised lung radius
    lower_v: float  # how far down the lateral edge it extends (0 apex .. 1 base)

    @staticmethod
    def draw(rng: np.random.Generator) -> Pneumothorax:
        return Pneumothorax(
            ptx_side=_side(rng),
            depth=float(rng.uniform(0.24, 0.36)),
            lower_v=float(rng.uniform(0.5, 0.85)),
        )

    @property
    def side(self) -> int:
        return self.ptx_side

    def effect(self, geom: ViewGeometry) -> FindingEffect:
        if geom.view == "LATERAL":
            return NO_EFFECT
        lung = geom.lung(self.ptx_side)
        r = lung.radius(geom.X, geom.Y)
        line_r = 1.0 - self.depth
        ramp = geom.edge / lung.a
        rim = smoothstep(line_r - 0.5 * ramp, line_r + 0.5 * ramp, r)
        _, y_low = lung.point(0.9, self.lower_v)
        window = 1.0 - smoothstep(y_low - 0.15, y_low, geom.Y)
        not_medial = smoothstep(-0.6 * lung.a, -0.3 * lung.a, (geom.X - lung.cx) * lung.outward)
        lung_occ = lung.occupancy(geom.X, geom.Y, geom.edge)
        region = rim * window * not_medial * lung_occ
        line_width = max(0.012, 0.6 * geom.pixel)
        line = tube_profile(np.abs(r - line_r) * lung.a, line_width, geom.edge)
        additive = -0.07 * region * geom.air_base + 0.16 * line * window * not_medial * lung_occ
        return FindingEffect(marking_loss=region, additive=additive)


# --- parenchyma -----------------------------------------------------------------------


@dataclass(frozen=True)
class Consolidation:
    """Dense, fairly homogeneous airspace opacity with an irregular margin."""

    label: ClassVar[str] = "Consolidation"
    lesion_side: int
    u: float
    v: float
    depth: float  # lateral-view placement, anterior 0 -> posterior 1
    radius_x: float
    radius_y: float
    density: float
    texture_seed: int

    @staticmethod
    def draw(rng: np.random.Generator) -> Consolidation:
        return Consolidation(
            lesion_side=_side(rng),
            u=float(rng.uniform(0.5, 0.75)),
            v=float(rng.uniform(0.3, 0.7)),
            depth=float(rng.uniform(0.3, 0.75)),
            radius_x=float(rng.uniform(0.15, 0.22)),
            radius_y=float(rng.uniform(0.15, 0.24)),
            density=float(rng.uniform(0.85, 0.95)),
            texture_seed=int(rng.integers(2**63)),
        )

    @property
    def side(self) -> int:
        return self.lesion_side

    def effect(self, geom: ViewGeometry) -> FindingEffect:
        lung = geom.lung(self.lesion_side)
        x, y = lung.point(self.depth if geom.view == "LATERAL" else self.u, self.v)
        noise = _texture(self.texture_seed, 0.06, geom)
        r = ellipse_radius(geom.X, geom.Y, x, y, self.radius_x, self.radius_y) * (1 + 0.12 * noise)
        occupancy = self.density * flat_disc(r, 0.3) * np.clip(0.9 + 0.15 * noise, 0.0, 1.0)
        return FindingEffect(occupancy=occupancy)


@dataclass(frozen=True)
class Pneumonia:
    """Patchy, ill-defined airspace opacity made of a few confluent foci."""

    label: ClassVar[str] = "Pneumonia"
    lesion_side: int
    u: float
    v: float
    depth: float
    radius: float
    foci: tuple[tuple[float, float], ...]  # offsets of the foci, in units of ``radius``
    density: float
    texture_seed: int

    @staticmethod
    def draw(rng: np.random.Generator) -> Pneumonia:
        n = int(rng.integers(2, 4))
        return Pneumonia(
            lesion_side=_side(rng),
            u=float(rng.uniform(0.45, 0.75)),
            v=float(rng.uniform(0.4, 0.75)),
            depth=float(rng.uniform(0.3, 0.75)),
            radius=float(rng.uniform(0.13, 0.18)),
            foci=tuple((float(a), float(b)) for a, b in rng.uniform(-0.7, 0.7, size=(n, 2))),
            density=float(rng.uniform(0.7, 0.85)),
            texture_seed=int(rng.integers(2**63)),
        )

    @property
    def side(self) -> int:
        return self.lesion_side

    def effect(self, geom: ViewGeometry) -> FindingEffect:
        lung = geom.lung(self.lesion_side)
        x, y = lung.point(self.depth if geom.view == "LATERAL" else self.u, self.v)
        patches = np.zeros(geom.shape, dtype=np.float32)
        for dx, dy in self.foci:
            r = ellipse_radius(
                geom.X, geom.Y, x + dx * self.radius, y + dy * self.radius, self.radius, self.radius
            )
            patches = np.maximum(patches, compact_bump(r * 0.9) * 1.4)
        texture = np.clip(0.65 + 0.45 * _texture(self.texture_seed, 0.04, geom), 0.0, 1.0)
        occupancy = self.density * np.clip(patches, 0.0, 1.0) * texture
        return FindingEffect(occupancy=occupancy)


@dataclass(frozen=True)
class LungOpacity:
    """Nonspecific hazy (ground-glass) opacity; the label is also implied by every
    parenchymal finding (see :data:`findings.LUNG_OPACITY_CHILDREN`)."""

    label: ClassVar[str] = "Lung Opacity"
    lesion_side: int
    u: float
    v: float
    depth: float
    radius: float
    density: float

    @staticmethod
    def draw(rng: np.random.Generator) -> LungOpacity:
        return LungOpacity(
            lesion_side=_side(rng),
            u=float(rng.uniform(0.45, 0.7)),
            v=float(rng.uniform(0.3, 0.7)),
            depth=float(rng.uniform(0.3, 0.7)),
            radius=float(rng.uniform(0.2, 0.28)),
            density=float(rng.uniform(0.45, 0.6)),
        )

    @property
    def side(self) -> int:
        return self.lesion_side

    def effect(self, geom: ViewGeometry) -> FindingEffect:
        lung = geom.lung(self.lesion_side)
        x, y = lung.point(self.depth if geom.view == "LATERAL" else self.u, self.v)
        r = ellipse_radius(geom.X, geom.Y, x, y, self.radius, self.radius * 1.2)
        return FindingEffect(occupancy=self.density * np.clip(1.6 * compact_bump(r), 0.0, 1.0))


@dataclass(frozen=True)
class Edema:
    """Pulmonary edema: bilateral perihilar ("bat-wing") haze with indistinct vessels."""

    label: ClassVar[str] = "Edema"
    extent: float
    density: float
    texture_seed: int

    @staticmethod
    def draw(rng: np.random.Generator) -> Edema:
        return Edema(
            extent=float(rng.uniform(0.34, 0.44)),
            density=float(rng.uniform(0.45, 0.6)),
            texture_seed=int(rng.integers(2**63)),
        )

    @property
    def side(self) -> int:
        return 0

    def effect(self, geom: ViewGeometry) -> FindingEffect:
        texture = np.clip(0.85 + 0.25 * _texture(self.texture_seed, 0.03, geom), 0.0, 1.0)
        haze = np.zeros(geom.shape, dtype=np.float32)
        for lung in geom.lungs:
            x, y = lung.point(0.5 if geom.view == "LATERAL" else 0.1, 0.55)
            r = ellipse_radius(geom.X, geom.Y, x, y, self.extent * 1.05, self.extent * 1.25)
            haze = np.maximum(haze, np.clip(1.5 * compact_bump(r), 0.0, 1.0))
        return FindingEffect(occupancy=self.density * haze * texture)


@dataclass(frozen=True)
class Atelectasis:
    """Collapsed, denser lung segment against an edge: a plate-like band above the
    diaphragm (``basal``) or a wedge along the lateral chest wall (``peripheral``)."""

    label: ClassVar[str] = "Atelectasis"
    kind: Literal["basal", "peripheral"]
    lesion_side: int
    u: float
    v: float
    thickness: float
    half_length: float
    density: float

    @staticmethod
    def draw(rng: np.random.Generator) -> Atelectasis:
        return Atelectasis(
            kind="basal" if rng.random() < 0.7 else "peripheral",
            lesion_side=_side(rng),
            u=float(rng.uniform(0.45, 0.7)),
            v=float(rng.uniform(0.35, 0.6)),
            thickness=float(rng.uniform(0.16, 0.24)),
            half_length=float(rng.uniform(0.24, 0.34)),
            density=float(rng.uniform(0.85, 0.95)),
        )

    @property
    def side(self) -> int:
        return self.lesion_side

    def effect(self, geom: ViewGeometry) -> FindingEffect:
        lung = geom.lung(self.lesion_side)
        X, Y = geom.X, geom.Y
        if self.kind == "basal" or geom.view == "LATERAL":
            # band hugging the dome, thickest in the middle (lens shape)
            x0, _ = lung.point(0.7 if geom.view == "LATERAL" else self.u, 1.0)
            along = compact_bump((X - x0) / self.half_length)
            height = lung.dome(X) - Y
            band = 1.0 - smoothstep(0.6, 1.0, height / (self.thickness * along + 1e-6))
        else:
            # wedge along the lateral wall: rim of the lung ellipse, thickest at v
            _, y0 = lung.point(1.0, self.v)
            along = compact_bump((Y - y0) / self.half_length)
            r = lung.radius(X, Y)
            inward = (1.0 - r) * lung.a
            band = 1.0 - smoothstep(0.6, 1.0, inward / (self.thickness * along + 1e-6))
            band = band * smoothstep(0.0, 0.3 * lung.a, (X - lung.cx) * lung.outward)
            band = band * (r < 1.1)
        return FindingEffect(occupancy=self.density * band * along)


@dataclass(frozen=True)
class LungLesion:
    """Solitary pulmonary nodule or mass: round, slightly lobulated, denser than tissue."""

    label: ClassVar[str] = "Lung Lesion"
    lesion_side: int
    u: float
    v: float
    depth: float
    radius: float
    texture_seed: int

    @staticmethod
    def draw(rng: np.random.Generator) -> LungLesion:
        return LungLesion(
            lesion_side=_side(rng),
            u=float(rng.uniform(0.5, 0.8)),
            v=float(rng.uniform(0.2, 0.65)),
            depth=float(rng.uniform(0.25, 0.75)),
            radius=float(rng.uniform(0.08, 0.13)),
            texture_seed=int(rng.integers(2**63)),
        )

    @property
    def side(self) -> int:
        return self.lesion_side

    def effect(self, geom: ViewGeometry) -> FindingEffect:
        lung = geom.lung(self.lesion_side)
        x, y = lung.point(self.depth if geom.view == "LATERAL" else self.u, self.v)
        lobulation = 1.0 + 0.08 * _texture(self.texture_seed, 0.05, geom)
        r = ellipse_radius(geom.X, geom.Y, x, y, self.radius, self.radius) * lobulation
        disc = flat_disc(r, 0.25)
        return FindingEffect(occupancy=disc, additive=0.07 * disc)


# --- bone -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Fracture:
    """Displaced posterior-lateral rib fracture with callus (frontal views)."""

    label: ClassVar[str] = "Fracture"
    rib_side: int
    rib: int
    lateral_x: float
    step: float

    @staticmethod
    def draw(rng: np.random.Generator) -> Fracture:
        return Fracture(
            rib_side=_side(rng),
            rib=int(rng.integers(3, 8)),
            lateral_x=float(rng.uniform(0.6, 0.8)),
            step=float(rng.uniform(0.025, 0.04)),
        )

    @property
    def side(self) -> int:
        return self.rib_side

    def effect(self, geom: ViewGeometry) -> FindingEffect:
        if geom.ribs is None:
            return NO_EFFECT
        ribs, X, Y = geom.ribs, geom.X, geom.Y
        x0 = self.rib_side * self.lateral_x
        y0 = float(ribs.centre_y(self.rib, np.asarray(x0)))
        local = compact_bump(ellipse_radius(X, Y, x0, y0, 0.16, 0.1))
        outer = smoothstep(-0.005, 0.005, (X - x0) * self.rib_side)
        intact = ribs.profile(self.rib, X, Y, geom.edge)
        # outer fragment displaced downward by ``step``; a lucent gap at the fracture line
        moved = ribs.profile(self.rib, X, Y - self.step, geom.edge)
        gap = 1.0 - smoothstep(0.012, 0.012 + geom.edge, np.abs(X - x0))
        fragment = (moved - intact) * outer * local - intact * gap
        callus = flat_disc(ellipse_radius(X, Y, x0, y0 + 0.5 * self.step, 0.07, 0.055), 0.5)
        additive = geom.anatomy.bone * (1.3 * fragment + 1.2 * callus) * geom.body
        return FindingEffect(additive=additive)


# --- devices --------------------------------------------------------------------------

DeviceKind = Literal["endotracheal tube", "enteric tube", "right central line", "pacemaker"]
DEVICE_KINDS: tuple[DeviceKind, ...] = (
    "endotracheal tube",
    "enteric tube",
    "right central line",
    "pacemaker",
)

# Control points of each device path (frontal, lateral), before per-study jitter.
_FRONTAL_PATHS: dict[str, tuple[tuple[float, float], ...]] = {
    "endotracheal tube": ((0.0, -1.5), (-0.02, -1.0), (-0.01, -0.55)),
    "enteric tube": ((0.02, -1.5), (0.0, -0.6), (0.08, 0.25), (0.55, 0.55), (0.42, 0.85)),
    "right central line": ((-0.55, -1.1), (-0.25, -0.85), (-0.07, -0.6), (-0.06, -0.15)),
    "pacemaker": ((0.55, -0.72), (0.25, -0.75), (-0.08, -0.4), (-0.05, 0.1), (0.18, 0.45)),
}
_LATERAL_PATHS: dict[str, tuple[tuple[float, float], ...]] = {
    "endotracheal tube": ((-0.15, -1.5), (-0.08, -1.0), (-0.01, -0.5)),
    "enteric tube": ((-0.2, -1.5), (0.1, -0.4), (0.18, 0.4), (-0.05, 0.75)),
    "right central line": ((-0.45, -1.15), (-0.25, -0.7), (-0.15, -0.15)),
    "pacemaker": ((-0.7, -0.72), (-0.4, -0.6), (-0.2, -0.1), (-0.45, 0.45)),
}


@dataclass(frozen=True)
class SupportDevices:
    """Tubes, lines and a pacemaker: thin radiopaque curves (the generator is a box)."""

    label: ClassVar[str] = "Support Devices"
    kinds: tuple[DeviceKind, ...]
    jitter: tuple[tuple[float, float], ...]  # per device: (dx, dy) shift of the path

    @staticmethod
    def draw(rng: np.random.Generator) -> SupportDevices:
        n = 1 if rng.random() < 0.6 else 2
        idx = rng.choice(len(DEVICE_KINDS), size=n, replace=False, p=[0.35, 0.25, 0.28, 0.12])
        kinds = tuple(DEVICE_KINDS[i] for i in sorted(idx.tolist()))
        jitter = tuple((float(a), float(b)) for a, b in rng.uniform(-0.04, 0.04, size=(n, 2)))
        return SupportDevices(kinds=kinds, jitter=jitter)

    @property
    def side(self) -> int:
        return 0

    def effect(self, geom: ViewGeometry) -> FindingEffect:
        paths = _LATERAL_PATHS if geom.view == "LATERAL" else _FRONTAL_PATHS
        half_width = max(0.018, 0.7 * geom.pixel)
        additive = np.zeros(geom.shape, dtype=np.float32)
        for kind, (dx, dy) in zip(self.kinds, self.jitter, strict=True):
            control = np.asarray(paths[kind], dtype=np.float64) + np.array([dx, dy])
            path = bezier_path(control, 40)
            d = polyline_distance(geom.X, geom.Y, path, half_width + geom.edge)
            additive = np.maximum(additive, 0.45 * tube_profile(d, half_width, geom.edge))
            if kind == "pacemaker":
                x0, y0 = control[0]
                box = ellipse_radius(geom.X, geom.Y, x0 + 0.04, y0, 0.12, 0.085)
                additive = np.maximum(additive, 0.8 * flat_disc(box, 0.15))
        return FindingEffect(additive=additive)
