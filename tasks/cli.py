"""The one argument layer for every ``python -m tasks STAGE`` command, and the shared bits of a stage's start.

A stage declares its arguments as a dataclass (as ``HfArgumentParser`` does in HF's examples) and calls
:func:`parse`: field names become ``--flags`` (underscores as dashes), the type annotation gives the type, a
field without a default is required, ``bool`` fields take ``--flag/--no-flag``, and ``metadata={"help": ...}``
is the help text; ``metadata={"positional": True}`` makes a positional argument. We do not use ``HfArgumentParser`` itself because importing transformers costs seconds in
stages that never touch a model (ingest, publish, registry).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import types
import typing
from typing import Any, Sequence, TypeVar

T = TypeVar("T")

# No model hub at run time, ever: set for every stage, in a pod and locally (the stage factory passes the same).
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false"}

NONE_WORDS = ("", "none", "null")


def set_offline_env(environ: typing.MutableMapping[str, str] | None = None) -> None:
    environ = os.environ if environ is None else environ
    for key, value in OFFLINE_ENV.items():
        environ.setdefault(key, value)


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging() -> None:
    """The one logging setup of a stage's process: INFO and up from every logger, one line each, on stderr (a
    pod's log and the local stage runner's output, which merges stderr into stdout). ``python -m tasks`` calls it
    before it imports the stage; a script that runs a stage's code in its own process (bench/) calls it first.
    It configures nothing where logging already is (a test's, or an embedding application's)."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)


def optional(value: str | None) -> str | None:
    """The one parser for the "no value" sentinel the DAG passes (``none``, ``null`` or empty) -> None."""
    if value is None or str(value).strip().lower() in NONE_WORDS:
        return None
    return value


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def parser_for(cls: type, prog: str, description: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        flag = "--" + field.name.replace("_", "-")
        tp, is_optional = _unwrap_optional(hints[field.name])
        has_default = field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING
        default = (field.default if field.default is not dataclasses.MISSING
                   else field.default_factory() if field.default_factory is not dataclasses.MISSING else None)
        kwargs: dict[str, Any] = {"dest": field.name, "help": field.metadata.get("help")}
        if tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=bool(default), **kwargs)
            continue
        if typing.get_origin(tp) is list:
            (item,) = typing.get_args(tp)
            kwargs.update(nargs="*", type=item)
        elif typing.get_origin(tp) is typing.Literal:
            kwargs.update(choices=list(typing.get_args(tp)))
        elif is_optional and tp is str:
            kwargs.update(type=optional)  # "none" from the DAG means no value
        else:
            kwargs.update(type=tp)
        if "choices" in field.metadata:
            kwargs["choices"] = field.metadata["choices"]
        if field.metadata.get("positional"):  # validate-spec FILE...: a list field without a --flag
            kwargs.pop("dest")
            if kwargs.get("nargs") == "*" and not has_default:
                kwargs["nargs"] = "+"
            parser.add_argument(field.name, **kwargs)
            continue
        parser.add_argument(flag, required=not has_default, default=default, **kwargs)
    return parser


def parse(cls: type[T], argv: Sequence[str] | None, prog: str, description: str | None = None) -> T:
    """Parse ``argv`` into an instance of the dataclass ``cls`` (argparse exits 2 with usage on bad input)."""
    namespace = parser_for(cls, prog, description).parse_args(None if argv is None else list(argv))
    return cls(**vars(namespace))
