"""The cohort plan: patients, their studies, ids, splits and dates, and the random streams.

Randomness layout (all from one integer seed, never global state):

- the PLAN stream draws the patient/study structure and the unique subject and study ids;
- every patient gets ``SeedSequence(seed, spawn_key=(1, patient_index))`` and every study
  ``SeedSequence(seed, spawn_key=(2, patient_index, study_number))``. A study's streams
  therefore do not depend on any other study, which makes the generator trivially
  parallelisable and keeps files stable when unrelated rates change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from storage.synthetic.ids import STUDY_ID_RANGE, SUBJECT_ID_RANGE, draw_unique_ids

Split = Literal["train", "validate", "test"]
SPLITS: tuple[Split, ...] = ("train", "validate", "test")

# studies per patient: 1-3 (MIMIC has a long tail; the demo keeps it short)
_STUDY_COUNT_P = (0.5, 0.3, 0.2)

_FIRST = {
    "F": ("Jane", "Maria", "Linda", "Susan", "Karen", "Aisha", "Mei"),
    "M": ("John", "Robert", "Michael", "David", "Omar", "Hiro", "Pavel"),
}
_LAST = ("Doe", "Roe", "Smith", "Garcia", "Miller", "Nguyen", "Okafor", "Kowalski", "Levy")


@dataclass(frozen=True)
class FakeIdentity:
    """Protected health information that DOES NOT EXIST: written to DICOM headers only, so
    tests can assert none of it reaches downstream stores."""

    patient_name: str  # DICOM PN: "Family^Given"
    patient_id: str  # hospital MRN, unrelated to subject_id
    birth_date: str  # YYYYMMDD, in the same shifted calendar as StudyDate
    sex: Literal["M", "F"]


@dataclass(frozen=True)
class StudyPlan:
    study_id: int
    number: int  # 0-based order within the patient
    study_date: int  # YYYYMMDD, shifted into 2100-2200 as in MIMIC
    study_time: float  # HHMMSS.fff as MIMIC writes it (a float, no leading zero)


@dataclass(frozen=True)
class PatientPlan:
    index: int
    subject_id: int
    split: Split
    studies: tuple[StudyPlan, ...]


@dataclass(frozen=True)
class CohortPlan:
    patients: tuple[PatientPlan, ...]

    @property
    def study_count(self) -> int:
        return sum(len(p.studies) for p in self.patients)


def plan_cohort(seed: int, studies: int, split_fractions: tuple[float, float, float]) -> CohortPlan:
    """Patients with 1-3 studies each until ``studies`` studies exist; splits per patient."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    counts: list[int] = []
    while sum(counts) < studies:
        counts.append(int(rng.choice(3, p=_STUDY_COUNT_P)) + 1)
    counts[-1] -= sum(counts) - studies
    subject_ids = sorted(draw_unique_ids(rng, *SUBJECT_ID_RANGE, len(counts)))
    study_ids = draw_unique_ids(rng, *STUDY_ID_RANGE, studies)
    split_idx = rng.choice(3, size=len(counts), p=np.asarray(split_fractions))
    patients: list[PatientPlan] = []
    cursor = 0
    for index, (subject_id, n) in enumerate(zip(subject_ids, counts, strict=True)):
        # first study on a random day of 2110-2200; follow-ups 1-400 days later
        day = int(rng.integers(0, 90 * 365))
        plans = []
        for number in range(n):
            if number:
                day += int(rng.integers(1, 400))
            seconds = float(rng.integers(0, 86_400_000)) / 1000.0
            plans.append(
                StudyPlan(
                    study_id=study_ids[cursor],
                    number=number,
                    study_date=_shifted_date(day),
                    study_time=_hhmmss(seconds),
                )
            )
            cursor += 1
        patients.append(
            PatientPlan(
                index=index,
                subject_id=subject_id,
                split=SPLITS[int(split_idx[index])],
                studies=tuple(plans),
            )
        )
    return CohortPlan(patients=tuple(patients))


def _shifted_date(day: int) -> int:
    date = np.datetime64("2110-01-01") + np.timedelta64(day, "D")
    return int(str(date).replace("-", ""))


def _hhmmss(seconds: float) -> float:
    h, rem = divmod(seconds, 3600.0)
    m, s = divmod(rem, 60.0)
    return round(h * 10000 + m * 100 + s, 3)


def patient_seed(seed: int, patient: PatientPlan) -> np.random.SeedSequence:
    return np.random.SeedSequence(seed, spawn_key=(1, patient.index))


def study_seed(seed: int, patient: PatientPlan, study: StudyPlan) -> np.random.SeedSequence:
    return np.random.SeedSequence(seed, spawn_key=(2, patient.index, study.number))


def draw_identity(rng: np.random.Generator, first_study_date: int) -> FakeIdentity:
    """A fake name, MRN and birth date (age 20-90 at the first study)."""
    sex: Literal["M", "F"] = "F" if rng.random() < 0.5 else "M"
    age_days = int(rng.integers(20 * 365, 90 * 365))
    first = np.datetime64(
        f"{first_study_date // 10000:04d}-{first_study_date // 100 % 100:02d}-"
        f"{first_study_date % 100:02d}"
    )
    birth = str(first - np.timedelta64(age_days, "D")).replace("-", "")
    given = _FIRST[sex]
    name = f"{_LAST[int(rng.integers(len(_LAST)))]}^{given[int(rng.integers(len(given)))]}"
    return FakeIdentity(
        patient_name=name,
        patient_id=f"{int(rng.integers(10**8, 10**9))}",
        birth_date=birth,
        sex=sex,
    )
