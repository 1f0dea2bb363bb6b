"""Deciding: retrain or skip, evaluate, gates, publish, the model registry and the run summary."""

from dataclasses import dataclass, field


@dataclass
class CandidateArgs:
    """The arguments evaluate and publish share: the run and the two candidates trained on a snapshot."""

    run: str = field(metadata={"help": "the run folder URI (holds spec.json)"})
    snapshot: str = field(metadata={"help": "the snapshot URI the candidates were trained on"})
    teacher: str = field(metadata={"help": "the candidate teacher's model folder URI"})
    student: str = field(metadata={"help": "the candidate student's model folder URI"})
