"""Chest-radiograph phantom: per-patient anatomy, per-image pose, and the normal image.

The image is rendered in ATTENUATION units T (0 = air outside the body, ~0.55 = soft
tissue, lungs ~0.15, bone adds ~0.1-0.2) and tone-mapped to brightness in [0, 1] later
(bright = dense, as on a radiograph). T is split into parts so findings can act on them:

    T = static - air * A + markings * A          (before findings)

- ``static``: body soft tissue, bones (ribs, clavicles, spine, shoulders), trachea, stomach
  bubble: everything findings do not modify;
- ``A`` (``air_base``): the aerated-lung fraction in [0, 1], lungs minus the heart and
  mediastinum silhouettes. Air lowers attenuation by ``air``;
- ``markings``: hilar vessels and the branching vascular pattern, visible only where lung
  is aerated (an opacity or a pneumothorax hides them).

Coordinates are patient units: x across (thorax half-width ~ 1; +x is the patient's LEFT,
which is the image's right on a frontal view), y down (apex ~ -0.85, diaphragm ~ +0.5).
The lateral view puts anterior at -x (patient faces image left, as usual in MIMIC).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from storage.synthetic.fields import (
    NoiseField,
    bezier_path,
    compact_bump,
    ellipse_radius,
    flat_disc,
    polyline_distance,
    smoothstep,
    soft_inside,
    tube_profile,
)

View = Literal["PA", "AP", "LATERAL"]
# One patient unit (the thorax half-width) in millimetres, for the DICOM pixel spacing.
PATIENT_UNIT_MM = 150.0
FRONTAL_VIEWS: tuple[View, ...] = ("PA", "AP")


@dataclass(frozen=True)
class Anatomy:
    """One patient's anatomy and radiographic appearance (shared by all their images)."""

    body_half_width: float
    lung_center_x: float  # |x| of each lung's centre
    lung_center_y: float
    lung_semi_x: float
    lung_semi_y: float
    diaphragm_y: float  # right dome apex; the left dome sits ``left_dome_drop`` lower
    left_dome_drop: float
    dome_curvature: float
    heart_x: float  # heart centre, shifted to the patient's left
    heart_semi_x: float
    heart_semi_y: float
    heart_tilt: float
    mediastinum_half_width: float
    aortic_knob: float  # left bulge of the upper mediastinum
    rib_start_y: float
    rib_spacing: float
    rib_half_thickness: float
    soft_tissue: float  # attenuation of the body
    air: float  # attenuation removed by fully aerated lung
    bone: float
    marking_strength: float
    brightness: float
    contrast: float
    gamma: float
    noise_scale: float
    breast_shadow: float  # 0 for male patients
    texture_seed: int  # lung-marking texture


def sample_anatomy(rng: np.random.Generator, female: bool) -> Anatomy:
    """Draw a plausible adult anatomy; ranges give visible but anatomical variation."""
    u = rng.uniform
    return Anatomy(
        body_half_width=float(u(0.92, 1.06)),
        lung_center_x=float(u(0.44, 0.50)),
        lung_center_y=float(u(0.06, 0.14)),
        lung_semi_x=float(u(0.35, 0.40)),
        lung_semi_y=float(u(0.90, 1.00)),
        diaphragm_y=float(u(0.40, 0.50)),
        left_dome_drop=float(u(0.02, 0.07)),
        dome_curvature=float(u(0.45, 0.75)),
        heart_x=float(u(0.10, 0.16)),
        heart_semi_x=float(u(0.29, 0.33)),
        heart_semi_y=float(u(0.23, 0.27)),
        heart_tilt=float(u(0.3, 0.5)),
        mediastinum_half_width=float(u(0.13, 0.16)),
        aortic_knob=float(u(0.02, 0.06)),
        rib_start_y=float(u(-0.98, -0.90)),
        rib_spacing=float(u(0.135, 0.155)),
        rib_half_thickness=float(u(0.020, 0.026)),
        soft_tissue=float(u(0.52, 0.60)),
        air=float(u(0.38, 0.45)),
        bone=float(u(0.09, 0.14)),
        marking_strength=float(u(0.05, 0.08)),
        brightness=float(u(0.0, 0.05)),
        contrast=float(u(1.05, 1.25)),
        gamma=float(u(0.85, 1.15)),
        noise_scale=float(u(0.6, 1.4)),
        breast_shadow=float(u(0.04, 0.08)) if female else 0.0,
        texture_seed=int(rng.integers(2**63)),
    )


@dataclass(frozen=True)
class ImagePose:
    """How one image samples the patient: view, pixel grid, positioning, noise stream."""

    view: View
    rows: int
    columns: int
    zoom: float  # patient units from the centre to the edge of the SHORTER image side
    shift_x: float
    shift_y: float
    rotation: float  # radians
    inspiration: float  # >1 deeper breath: lungs taller, diaphragm lower
    noise_seed: int

    @property
    def pixel_spacing_mm(self) -> float:
        """Detector pixel size implied by the field of view (thorax half-width ~ 150 mm)."""
        return PATIENT_UNIT_MM * self.zoom / (min(self.rows, self.columns) / 2.0)


def sample_pose(rng: np.random.Generator, view: View, size: int) -> ImagePose:
    """Non-square pixel grid around ``size`` with small positioning variation."""
    rows = round(size * rng.uniform(0.92, 1.12))
    columns = round(size * rng.uniform(0.88, 1.08))
    if rows == columns:
        columns -= 1  # MIMIC images are practically never square; keep Rows != Columns
    return ImagePose(
        view=view,
        rows=rows,
        columns=columns,
        zoom=float(rng.uniform(1.04, 1.16)),
        shift_x=float(rng.uniform(-0.05, 0.05)),
        shift_y=float(rng.uniform(-0.24, -0.12)),
        rotation=float(rng.uniform(-0.04, 0.04)),
        inspiration=float(rng.uniform(0.93, 1.04))
        if view == "AP"
        else float(rng.uniform(0.98, 1.06)),
        noise_seed=int(rng.integers(2**63)),
    )


@dataclass(frozen=True)
class LungField:
    """One lung (frontal: side -1 patient right / +1 patient left; lateral: side 0, both
    lungs superimposed): an ellipse cut from below by a parabolic diaphragm dome."""

    side: int
    cx: float
    cy: float
    a: float
    b: float
    dome_x: float
    dome_y: float
    dome_curvature: float

    def dome(self, X: np.ndarray) -> np.ndarray:
        """Diaphragm height y(x) = dome_y + k (x - dome_x)^2 (a dome convex upward)."""
        return self.dome_y + self.dome_curvature * (X - self.dome_x) ** 2

    def radius(self, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
        return ellipse_radius(X, Y, self.cx, self.cy, self.a, self.b)

    def occupancy(self, X: np.ndarray, Y: np.ndarray, edge: float) -> np.ndarray:
        inside_ellipse = soft_inside((1.0 - self.radius(X, Y)) * self.a, edge)
        above_dome = soft_inside(self.dome(X) - Y, edge)
        return inside_ellipse * above_dome

    @property
    def outward(self) -> int:
        """+1 when lateral (away from the midline) is +x; on the lateral view +x = posterior."""
        return self.side if self.side else 1

    def point(self, u: float, v: float) -> tuple[float, float]:
        """Lung-relative placement: u 0 medial -> 1 lateral (lateral view: anterior ->
        posterior), v 0 apex -> 1 diaphragm. Interior for u, v in ~[0.15, 0.85]."""
        x = self.cx + self.outward * (2.0 * u - 1.0) * 0.85 * self.a
        top = self.cy - self.b
        base = float(self.dome(np.asarray(x)))
        return x, top + v * (base - top)

    @property
    def apex_y(self) -> float:
        return self.cy - self.b


@dataclass(frozen=True)
class HeartShape:
    cx: float
    cy: float
    a: float
    b: float
    tilt: float

    def occupancy(
        self, X: np.ndarray, Y: np.ndarray, edge: float, scale: float = 1.0
    ) -> np.ndarray:
        """Heart silhouette; ``scale`` > 1 enlarges it about its RIGHT-lower border, the way
        a dilated left ventricle grows to the patient's left and downward."""
        cx = self.cx + (scale - 1.0) * self.a * 0.75
        cy = self.cy + (scale - 1.0) * self.b * 0.35
        a, b = self.a * scale, self.b * (1.0 + (scale - 1.0) * 0.7)
        r = ellipse_radius(X, Y, cx, cy, a, b, self.tilt)
        return soft_inside((1.0 - r) * min(a, b), edge)


@dataclass(frozen=True)
class MediastinumShape:
    """Frontal mediastinum: a vertical band between the thoracic inlet and the heart."""

    cx: float
    half_width: float
    knob: float
    top_y: float
    bottom_y: float

    def occupancy(
        self, X: np.ndarray, Y: np.ndarray, edge: float, widen: float = 1.0
    ) -> np.ndarray:
        """``widen`` > 1 widens the upper mediastinum (the vascular pedicle and the
        paratracheal stripe region, y in [-0.85, 0.1]) on both sides."""
        profile = 1.0 + (widen - 1.0) * compact_bump((Y + 0.38) / 0.5)
        right = self.half_width * profile
        # aortic knob: a left-sided bulge at the level of the arch
        left = (self.half_width + self.knob * compact_bump((Y + 0.45) / 0.16)) * profile
        dx = X - self.cx
        inside = np.minimum(right + dx, left - dx)
        vertical = smoothstep(self.top_y - 0.1, self.top_y, Y) * (
            1.0 - smoothstep(self.bottom_y, self.bottom_y + 0.1, Y)
        )
        return soft_inside(inside, edge) * vertical


@dataclass(frozen=True)
class RibSet:
    """Posterior ribs of both sides: rib k centre line y = y0 + k dy + c(|x|)."""

    start_y: float
    spacing: float
    half_thickness: float
    count: int

    def centre_y(self, k: int, X: np.ndarray) -> np.ndarray:
        ax = np.abs(X)
        # a posterior rib rises briefly from the spine then sweeps down laterally
        return self.start_y + k * self.spacing + (-0.12 * ax + 0.50 * ax * ax) * (1.0 + 0.04 * k)

    def profile(self, k: int, X: np.ndarray, Y: np.ndarray, edge: float) -> np.ndarray:
        """Rib band with brighter cortical margins (1 inside, 0 outside)."""
        d = np.abs(Y - self.centre_y(k, X))
        band = 1.0 - smoothstep(
            self.half_thickness - 0.5 * edge, self.half_thickness + 0.5 * edge, d
        )
        cortex = compact_bump((d - self.half_thickness * 0.8) / (self.half_thickness * 0.45))
        return band * 0.75 + 0.35 * cortex


@dataclass(frozen=True)
class ViewGeometry:
    """Everything a finding needs to draw itself on one image, plus the normal image parts."""

    view: View
    X: np.ndarray  # (H, W) float32 patient coordinates of each pixel centre
    Y: np.ndarray
    pixel: float  # patient units per pixel
    lungs: tuple[LungField, ...]
    heart: HeartShape
    mediastinum: MediastinumShape | None  # None on the lateral view
    ribs: RibSet | None  # None on the lateral view
    body: np.ndarray  # body occupancy
    air_base: np.ndarray  # aerated lung fraction A before findings
    markings: np.ndarray  # vascular pattern (attenuation units), shown where aerated
    static: np.ndarray  # attenuation of everything findings do not modify
    anatomy: Anatomy

    @property
    def edge(self) -> float:
        """Edge ramp width: ~1.2 pixels, so shapes stay crisp yet anti-aliased at any size."""
        return 1.2 * self.pixel

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.X.shape[0]), int(self.X.shape[1]))

    def lung(self, side: int) -> LungField:
        """The lung on ``side`` (-1 right, +1 left); the single lung field on a lateral."""
        if self.view == "LATERAL":
            return self.lungs[0]
        return self.lungs[0] if side < 0 else self.lungs[1]


def pixel_grid(pose: ImagePose) -> tuple[np.ndarray, np.ndarray, float]:
    """Patient coordinates of every pixel centre and the patient units per pixel."""
    pixel = pose.zoom / (min(pose.rows, pose.columns) / 2.0)
    j = (np.arange(pose.columns, dtype=np.float32) + 0.5 - pose.columns / 2.0) * pixel
    i = (np.arange(pose.rows, dtype=np.float32) + 0.5 - pose.rows / 2.0) * pixel
    x, y = np.meshgrid(j, i)
    c, s = np.cos(pose.rotation), np.sin(pose.rotation)
    X = (c * x - s * y + pose.shift_x).astype(np.float32)
    Y = (s * x + c * y + pose.shift_y).astype(np.float32)
    return X, Y, float(pixel)


def build_geometry(anatomy: Anatomy, pose: ImagePose) -> ViewGeometry:
    """The normal (finding-free) image of ``anatomy`` as seen by ``pose``, in parts."""
    if pose.view == "LATERAL":
        return _build_lateral(anatomy, pose)
    return _build_frontal(anatomy, pose)


def _vessel_markings(
    anatomy: Anatomy, X: np.ndarray, Y: np.ndarray, hila: list[tuple[float, float]]
) -> np.ndarray:
    """Branching vascular markings: thin ridges along the zero set of smooth noise, denser
    and stronger toward the hila, plus the hilar vessel bundles themselves."""
    rng = np.random.default_rng(anatomy.texture_seed)
    noise = NoiseField.draw(rng, correlation=0.05).sample(X, Y)
    ridges = np.exp(-((noise / 0.32) ** 2))
    near_hilum = np.zeros_like(X)
    hilar = np.zeros_like(X)
    for hx, hy in hila:
        d = np.sqrt((X - hx) ** 2 + (Y - hy) ** 2)
        near_hilum = np.maximum(near_hilum, np.clip(1.0 - d / 1.1, 0.3, 1.0))
        hilar += compact_bump(ellipse_radius(X, Y, hx, hy, 0.11, 0.16))
    return anatomy.marking_strength * (ridges * near_hilum + 0.9 * hilar)


def _build_frontal(anatomy: Anatomy, pose: ImagePose) -> ViewGeometry:
    X, Y, pixel = pixel_grid(pose)
    edge = 1.2 * pixel
    ap = pose.view == "AP"
    # AP (portable, supine/semi-erect): the heart and mediastinum project ~10-15% larger
    # (divergent beam, heart far from the detector) and inspiration is poorer.
    magnify = 1.12 if ap else 1.0
    insp = pose.inspiration
    bw = anatomy.body_half_width

    # body: torso widening slightly downward, neck, shoulders
    torso = soft_inside(bw * (1.0 + 0.05 * (Y + 0.8)) - np.abs(X), 3 * edge) * smoothstep(
        -1.15, -0.95, Y
    )
    neck = soft_inside(0.30 - np.abs(X), 3 * edge)
    shoulders = flat_disc(ellipse_radius(np.abs(X), Y, 0.82 * bw, -1.02, 0.42, 0.24), 0.2)
    body = np.clip(torso + neck + shoulders, 0.0, 1.0)
    # soft tissue is thicker centrally (the chest is a rounded slab)
    static = anatomy.soft_tissue * body * (1.0 - 0.22 * (X / bw) ** 2)

    lungs = []
    for side in (-1, 1):
        drop = anatomy.left_dome_drop if side > 0 else 0.0
        lungs.append(
            LungField(
                side=side,
                cx=side * anatomy.lung_center_x,
                cy=anatomy.lung_center_y + (insp - 1.0) * 0.4,
                a=anatomy.lung_semi_x,
                b=anatomy.lung_semi_y * insp,
                dome_x=side * (anatomy.lung_center_x - 0.05),
                dome_y=anatomy.diaphragm_y + drop + (insp - 1.0) * 0.9 - (0.04 if ap else 0.0),
                dome_curvature=anatomy.dome_curvature,
            )
        )
    lung_occ = np.clip(lungs[0].occupancy(X, Y, edge) + lungs[1].occupancy(X, Y, edge), 0, 1)

    dome_top = lungs[0].dome_y
    heart = HeartShape(
        cx=anatomy.heart_x,
        cy=dome_top - 0.75 * anatomy.heart_semi_y * magnify,
        a=anatomy.heart_semi_x * magnify,
        b=anatomy.heart_semi_y * magnify,
        tilt=anatomy.heart_tilt,
    )
    mediastinum = MediastinumShape(
        cx=0.0,
        half_width=anatomy.mediastinum_half_width * (1.08 if ap else 1.0),
        knob=anatomy.aortic_knob,
        top_y=-1.2,
        bottom_y=dome_top + 0.1,
    )
    heart_occ = heart.occupancy(X, Y, edge)
    med_occ = mediastinum.occupancy(X, Y, edge)
    air_base = lung_occ * (1.0 - heart_occ) * (1.0 - med_occ)
    # the heart is denser than the soft-tissue slab it replaces
    static = static + 0.12 * heart_occ * (1.0 - med_occ)

    # spine: a vertical band with vertebral bodies (brighter) and disc spaces (darker)
    vertebrae = 0.75 + 0.25 * np.cos(2.0 * np.pi * (Y - anatomy.rib_start_y) / anatomy.rib_spacing)
    static = static + anatomy.bone * 1.1 * soft_inside(0.085 - np.abs(X), edge) * vertebrae * torso

    # trachea and main bronchi: an air column inside the mediastinum
    carina_y = -0.38
    trachea = tube_profile(
        polyline_distance(X, Y, np.array([[-0.02, -1.4], [0.0, carina_y]]), 0.1), 0.04, 2 * edge
    )
    for side in (-1, 1):
        bronchus = np.array([[0.0, carina_y], [side * 0.14, carina_y + 0.13]])
        trachea = np.maximum(
            trachea, tube_profile(polyline_distance(X, Y, bronchus, 0.1), 0.028, 2 * edge)
        )
    static = static - 0.16 * trachea * body

    ribs = RibSet(
        start_y=anatomy.rib_start_y + (0.03 if ap else 0.0),
        spacing=anatomy.rib_spacing,
        half_thickness=anatomy.rib_half_thickness,
        count=10,
    )
    within_chest = soft_inside(bw * (1.0 + 0.05 * (Y + 0.8)) - 0.05 - np.abs(X), 3 * edge)
    lateral_of_spine = smoothstep(0.06, 0.12, np.abs(X))
    rib_sum = np.zeros_like(X)
    for k in range(ribs.count):
        rib_sum += ribs.profile(k, X, Y, edge)
    # anterior ribs: faint, sloping down toward the midline, ending at the costal cartilage
    for k in range(6):
        y_ant = anatomy.rib_start_y + 0.25 + k * 0.19 + 0.28 * (bw - np.abs(X))
        d = np.abs(Y - y_ant)
        rib_sum += (
            0.35 * (1.0 - smoothstep(0.022, 0.022 + edge, d)) * smoothstep(0.3, 0.45, np.abs(X))
        )
    static = static + 0.8 * anatomy.bone * rib_sum * within_chest * lateral_of_spine

    # clavicles: S-shaped bars from the sternal notch up and out to the shoulders
    lift = -0.06 if ap else 0.0
    for side in (-1, 1):
        control = np.array(
            [
                [side * 0.08, -0.86 + lift],
                [side * 0.40, -0.86 + lift],
                [side * 0.62, -1.02 + lift],
                [side * 0.80, -1.00 + lift],
            ]
        )
        d = polyline_distance(X, Y, bezier_path(control, 24), 0.1)
        static = static + anatomy.bone * 1.3 * tube_profile(d, 0.032, edge)
        # humeral head
        head = flat_disc(ellipse_radius(X, Y, side * (bw + 0.02), -0.98, 0.16, 0.18), 0.15)
        static = static + anatomy.bone * 1.2 * head

    # gastric air bubble under the left hemidiaphragm
    left = lungs[1]
    bubble = flat_disc(
        ellipse_radius(X, Y, left.dome_x + 0.04, left.dome_y + 0.16, 0.11, 0.06), 0.4
    )
    static = static - 0.18 * bubble * body
    if anatomy.breast_shadow:
        for side in (-1, 1):
            breast = compact_bump(ellipse_radius(X, Y, side * 0.52, 0.42, 0.38, 0.26))
            static = static + anatomy.breast_shadow * breast * body

    hila = [(side * (mediastinum.half_width + 0.07), -0.12) for side in (-1, 1)]
    markings = _vessel_markings(anatomy, X, Y, hila)
    return ViewGeometry(
        view=pose.view,
        X=X,
        Y=Y,
        pixel=pixel,
        lungs=(lungs[0], lungs[1]),
        heart=heart,
        mediastinum=mediastinum,
        ribs=ribs,
        body=body,
        air_base=air_base.astype(np.float32),
        markings=markings.astype(np.float32),
        static=static.astype(np.float32),
        anatomy=anatomy,
    )


def _build_lateral(anatomy: Anatomy, pose: ImagePose) -> ViewGeometry:
    """Simpler lateral phantom: one superimposed lung field, anterior heart, posterior spine."""
    X, Y, pixel = pixel_grid(pose)
    edge = 1.2 * pixel
    insp = pose.inspiration
    # rounded-box body (superellipse p = 3) with the neck on top
    body_r = np.abs((X - 0.02) / 0.95) ** 3 + np.abs((Y - 0.2) / 1.45) ** 3
    body = soft_inside(1.0 - body_r, 0.05) + soft_inside(0.32 - np.abs(X + 0.05), 3 * edge) * (
        Y < -0.9
    )
    body = np.clip(body, 0.0, 1.0)
    static = anatomy.soft_tissue * 1.05 * body

    lung = LungField(
        side=0,
        cx=0.0,
        cy=0.02 + (insp - 1.0) * 0.4,
        a=0.70,
        b=0.92 * insp,
        dome_x=-0.35,
        dome_y=anatomy.diaphragm_y - 0.06 + (insp - 1.0) * 0.9,
        dome_curvature=0.32,
    )
    lung_occ = lung.occupancy(X, Y, edge)
    heart = HeartShape(
        cx=-0.26,
        cy=lung.dome_y - 0.12,
        a=anatomy.heart_semi_x * 1.15,
        b=anatomy.heart_semi_y * 1.4,
        tilt=-0.5,
    )
    heart_occ = heart.occupancy(X, Y, edge)
    air_base = lung_occ * (1.0 - heart_occ)

    # thoracic spine: vertebral bodies separated by disc spaces, posterior to the lungs
    spine_x = 0.60
    in_column = soft_inside(0.11 - np.abs(X - spine_x - 0.05 * Y), edge)
    discs = 0.55 + 0.45 * smoothstep(-0.6, 0.2, np.cos(2 * np.pi * Y / anatomy.rib_spacing))
    static = static + anatomy.bone * 1.6 * in_column * discs * body
    # sternum, anterior
    sternum = tube_profile(
        polyline_distance(X, Y, np.array([[-0.80, -0.80], [-0.70, 0.40]]), 0.1), 0.03, edge
    )
    static = static + anatomy.bone * 1.3 * sternum * body
    # trachea descending and slightly posteriorly
    trachea = tube_profile(
        polyline_distance(X, Y, np.array([[-0.12, -1.2], [0.02, -0.32]]), 0.1), 0.045, 2 * edge
    )
    static = static - 0.12 * trachea * body
    # superimposed posterior ribs: faint oblique bands
    ribs = np.zeros_like(X)
    for k in range(9):
        yk = anatomy.rib_start_y + 0.1 + k * anatomy.rib_spacing - 0.25 * (X - 0.6)
        ribs += 1.0 - smoothstep(0.02, 0.02 + edge, np.abs(Y - yk))
    static = static + 0.5 * anatomy.bone * ribs * smoothstep(-0.1, 0.3, X) * lung_occ
    markings = _vessel_markings(anatomy, X, Y, [(0.0, -0.05)])
    return ViewGeometry(
        view=pose.view,
        X=X,
        Y=Y,
        pixel=pixel,
        lungs=(lung,),
        heart=heart,
        mediastinum=None,
        ribs=None,
        body=body,
        air_base=air_base.astype(np.float32),
        markings=markings.astype(np.float32),
        static=static.astype(np.float32),
        anatomy=anatomy,
    )
