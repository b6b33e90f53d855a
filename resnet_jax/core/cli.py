"""What the command lines share: the multi-host flags, logging, the compilation cache, and how errors end them.

Entry points (`main.py`, `evaluate.py`, the experiment scripts) call `define_distributed_flags()` once where they
define their own flags, and run through `run(main)`, which sets up logging and ends a `UserError` with its message
alone and exit status 2, and a stopped run (`RunStopped`) with its message alone and exit status 1.
"""

from __future__ import annotations

import logging as std_logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import jax
from absl import app, flags, logging

from resnet_jax.core.errors import RunStopped, UserError

FLAGS = flags.FLAGS
_PACKAGE = Path(__file__).resolve().parents[1]
# Our code: the package, and the repository's scripts beside it (not, say, a virtual environment inside the checkout).
_OUR_CODE = (f"{_PACKAGE}/", *(f"{_PACKAGE.parent / d}/" for d in ("experiments", "benchmarks", "configs")))


def define_distributed_flags() -> None:
    flags.DEFINE_bool(
        "distributed",
        False,
        "Call jax.distributed.initialize(): automatic on Cloud TPU and Slurm; "
        "elsewhere also give --coordinator_address, --num_processes and --process_id.",
    )
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for jax.distributed on other clusters.")
    flags.DEFINE_integer("num_processes", None, "Number of processes, for jax.distributed on other clusters.")
    flags.DEFINE_integer("process_id", None, "This process's index, for jax.distributed on other clusters.")
    flags.DEFINE_string(
        "compilation_cache",
        os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.join("~", ".cache", "resnet_jax", "jax"),
        "Directory (local or gs://) where JAX keeps compiled programs across runs; empty: none. "
        "Default: $JAX_COMPILATION_CACHE_DIR (JAX's own variable) where set, else ~/.cache/resnet_jax/jax.",
    )


def initialize() -> None:
    """Joins the other processes (with --distributed or --coordinator_address) and enables the compilation cache."""
    if FLAGS.distributed or FLAGS.coordinator_address:
        jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    if FLAGS.compilation_cache:
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(FLAGS.compilation_cache))
    logging.info(
        "JAX: %d process(es), %d %s device(s).", jax.process_count(), jax.device_count(), jax.devices()[0].platform
    )


class _OursOrImportant(std_logging.Filter):
    """Keeps every message of ours and the warnings of libraries (orbax's INFO lines flood the progress)."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        return record.levelno >= std_logging.WARNING or record.pathname.startswith(_OUR_CODE)


def setup_logging() -> None:
    """INFO for our messages (the progress line included); other libraries' INFO only with --verbosity=1."""
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.INFO)
        logging.get_absl_handler().addFilter(_OursOrImportant())


def config_flag(name: str = "config"):
    """The value of a `config_flags` config file flag; a file that is missing or fails to load is a `ConfigError`."""
    import ml_collections

    from resnet_jax.core.errors import ConfigError

    try:
        config = getattr(FLAGS, name)
        if not isinstance(config, ml_collections.ConfigDict):
            config.keys()  # ml_collections' stand-in for a config that failed to load raises its error on any use
    except Exception as error:  # the loader reports failures as OSError, a config's own code raises anything
        raise ConfigError(f"--{name} could not be loaded: {_last_line(error)}") from error
    return config


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a bad flag or a config file that does not load as one line and exit status 2."""
    try:
        return FLAGS(argv)
    except Exception as error:  # noqa: BLE001 - ml_collections loads config files (and applies overrides) here
        _exit(f"error: a flag could not be parsed: {_last_line(error)} (--helpshort lists the flags)", 2)
    raise AssertionError("unreachable")


def _last_line(error: BaseException) -> str:
    """The gist of an error whose message may carry a traceback or a config loader's attempts: its last line."""
    text = str(error.__cause__ or error).strip()
    if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":  # a repr()-quoted message, as absl gives some
        text = text[1:-1].replace("\\n", "\n").replace("\\'", "'")
    lines = [line.strip() for line in text.splitlines()]
    return next((line for line in reversed(lines) if line), repr(error))


def run(main: Callable[[list[str]], None]) -> None:
    """`absl.app.run(main)`, with errors meant for people printed as one line instead of a traceback."""

    def guarded(argv: list[str]) -> None:
        setup_logging()
        try:
            main(argv)
        except UserError as error:
            _exit(f"error: {error}", 2)
        except RunStopped as error:
            _exit(f"stopped: {error}", 1)

    app.run(guarded, flags_parser=_parse_flags)


def _exit(message: str, status: int) -> None:
    logging.flush()
    print(f"resnet_jax: {message}", file=sys.stderr, flush=True)
    sys.exit(status)
