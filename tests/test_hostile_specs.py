"""Hostile specs: each is validated by `python -m pipeline validate` in a subprocess under a 1 GiB memory cap and a
timeout, and must exit 2 with exactly the expected lines (one, or the capped list), no traceback and nothing leaked.

The inputs are built in tmp_path by each case (FIFOs, device symlinks and large files are never committed).
"""

from __future__ import annotations

import itertools
import os
import resource
import string
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MNIST = (ROOT / "specs" / "mnist.yaml").read_text(encoding="utf-8")
MEMORY_CAP = 1 << 30  # 1 GiB of address space: the issue's cap, under which every case must end cleanly
HANG_TIMEOUT = 10  # seconds: a guard against a hang, far above what any case takes (well under a second here)
SPEC = "specs/spec.yaml"  # every case's spec, as validate shows it from the case's folder
PIN = "f2ff0eb82e268bed56f626ba0d3a7862e0c9e0653ffab40c46fe8b75454592e4"


def mnist(old: str, new: str) -> str:
    """The tutorial's spec with one piece changed."""
    assert MNIST.count(old) == 1, old
    return MNIST.replace(old, new)


def text(content: str) -> Callable[[Path], None]:
    def make(root: Path) -> None:
        (root / SPEC).write_text(content, encoding="utf-8")

    return make


def symlink_to(target: str, content: str | None = None) -> Callable[[Path], None]:
    """The spec is a symlink to `target` (created with `content` when given, relative to the case's folder)."""

    def make(root: Path) -> None:
        if content is not None:
            (root / target).write_text(content, encoding="utf-8")
        os.symlink(target if target.startswith("/") else root / target, root / SPEC)

    return make


def fifo(root: Path) -> None:
    os.mkfifo(root / SPEC)


def with_files(content: str, setup: Callable[[Path], None]) -> Callable[[Path], None]:
    def make(root: Path) -> None:
        setup(root)
        (root / SPEC).write_text(content, encoding="utf-8")

    return make


LAUGHS = "".join(
    f"{name}: &{name} [{', '.join([f'*{prev}'] * 9) if prev else ', '.join(['lol'] * 9)}]\n"
    for prev, name in zip([""] + list("abcdefgh"), "abcdefghi")
)
SECRETS_ENV = "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMIK7MDENGbPxRfiCY\nDB_PASSWORD=hunter2-correct-horse\nexport TOKEN=ghp_0123456789abcdef\n"
SECRETS_YAML = "".join(f"SECRET_{i}: value-{i}-zq{i * 7919}\n" for i in range(500))
SECRETS_JSON = (
    '{"type": "service_account", "private_key_id": "3f2a9c", "private_key": "-----BEGIN PRIVATE KEY-----\\nMIIEvQ"}\n'
)
KUBE_SECRET = "apiVersion: v1\nkind: Secret\nmetadata: {name: db}\ndata:\n  password: aHVudGVyMg==\n"


def many_tags(n: int) -> str:
    keys = ("".join(p) for p in itertools.product(string.ascii_letters + string.digits, repeat=3))
    return "tags:\n" + "".join(f"  {key}: v\n" for key, _ in zip(keys, range(n)))


def unknown_keys(n: int) -> str:
    return MNIST + "".join(f"x-{i}: 1\n" for i in range(n))


@dataclass(frozen=True)
class Case:
    make: Callable[[Path], None]
    lines: list[str]  # what validate prints about the file, exactly
    secrets: tuple[str, ...] = ()  # what must not appear anywhere in its output


UNKNOWN_HINT = "unknown key; expected one of: apiVersion, deploy, description, environment, model, name, scoring, state, tags, templates, test"
DEV_ZERO = "is a symlink to /dev/zero, which is a character device, not a regular file"
NAME_RULE = (
    "must be 3-32 characters of lowercase letters, digits and '-', starting with a letter and not ending with '-'"
)

CASES: dict[str, Case] = {
    # -- the file itself: regular files only, at most 1 MiB ---------------------------------------------
    "symlink-to-dev-zero": Case(symlink_to("/dev/zero"), [f"{SPEC}: {DEV_ZERO}; a spec must be a regular file"]),
    "symlink-to-dev-urandom": Case(
        symlink_to("/dev/urandom"),
        [
            f"{SPEC}: is a symlink to /dev/urandom, which is a character device, not a regular file; a spec must be a regular file"
        ],
    ),
    "named-pipe": Case(fifo, [f"{SPEC}: is a named pipe (FIFO), not a regular file; a spec must be a regular file"]),
    "dangling-symlink": Case(
        symlink_to("/nonexistent/spec.yaml"), [f"{SPEC}: is a symlink to /nonexistent/spec.yaml, which does not exist"]
    ),
    "2-MiB-file": Case(
        text("# " + "x" * (2 * 1024 * 1024 - 3) + "\n"),
        [f"{SPEC}: larger than 1 MiB (2,097,152 bytes), the limit for a spec file"],
    ),
    "1-MiB-and-1-byte": Case(
        text("#" * (1024 * 1024) + "\n"), [f"{SPEC}: larger than 1 MiB (1,048,577 bytes), the limit for a spec file"]
    ),
    # -- YAML that multiplies: aliases bounded, recursion refused, nesting bounded ------------------------
    "billion-laughs": Case(
        text(LAUGHS), [f"{SPEC}:4: YAML aliases expand to more than 1,000 values (at *c); write the values out"]
    ),
    "billion-laughs-inside-a-spec": Case(
        text(mnist("description: Predict MNIST with sklearn\n", "description: Predict MNIST with sklearn\n" + LAUGHS)),
        [f"{SPEC}:8: YAML aliases expand to more than 1,000 values (at *c); write the values out"],
    ),
    "recursive-alias": Case(
        text("apiVersion: pipeline/v1\nname: &a [*a]\n"),
        [f"{SPEC}:2: YAML alias *a is inside its own anchor &a (a recursive alias)"],
    ),
    "recursive-alias-in-a-mapping": Case(
        text("apiVersion: pipeline/v1\ndeploy: &d\n  local: {port: 0}\n  again: *d\n"),
        [f"{SPEC}:4: YAML alias *d is inside its own anchor &d (a recursive alias)"],
    ),
    "nested-lists-100-deep": Case(
        text(mnist("description: Predict MNIST with sklearn", "description: " + "[" * 100 + "]" * 100)),
        [f"{SPEC}:4: YAML nested more than 32 levels deep"],
    ),
    "nested-flow-10000-deep": Case(
        text(mnist("description: Predict MNIST with sklearn", "description: " + "[" * 10000 + "]" * 10000)),
        [f"{SPEC}:4: YAML syntax error: exceeded maximum nesting depth"],
    ),
    # -- numbers: bounded and finite ----------------------------------------------------------------------
    "integer-of-5000-digits": Case(
        text(mnist("features: 784", "features: " + "9" * 5000)),
        [f"{SPEC}:21: scoring.features: must be <= 1000000, got an integer of 5,000 digits"],
    ),
    "negative-integer-of-5000-digits": Case(
        text(mnist("seed: 42", "seed: -" + "7" * 5000)),
        [f"{SPEC}:30: test.seed: must be >= 0, got a negative integer of 5,000 digits"],
    ),
    "hex-integer-of-5000-digits-for-a-string": Case(
        text(mnist("name: sklearn-mnist-svc", "name: 0x" + "f" * 5000)),
        [f"{SPEC}:3: name: {NAME_RULE}, got an integer of 5,000 digits; quote it to make it a string"],
    ),
    "seed-beyond-numpy": Case(
        text(mnist("seed: 42", "seed: 4294967296")), [f"{SPEC}:30: test.seed: must be <= 4294967295, got 4294967296"]
    ),
    "scale-nan": Case(
        text(mnist("scale: 255", "scale: .nan")), [f"{SPEC}:27: test.scale: expected a finite number, got .nan"]
    ),
    "scale-infinite": Case(
        text(mnist("scale: 255", "scale: .inf")), [f"{SPEC}:27: test.scale: expected a finite number, got .inf"]
    ),
    "scale-overflowing-to-infinity": Case(
        text(mnist("scale: 255", "scale: 1.0e+999")), [f"{SPEC}:27: test.scale: expected a finite number, got 1.0e+999"]
    ),
    "memory-nan": Case(
        text(mnist("memory_gb: 1", "memory_gb: .NaN")),
        [f"{SPEC}:35: deploy.memory_gb: expected a finite number, got .NaN"],
    ),
    # -- a file that is not a spec: one line, nothing of it quoted ----------------------------------------
    "symlink-to-secrets-env-file": Case(
        symlink_to("secrets.env", SECRETS_ENV),
        [f"{SPEC}:1: the spec must be a YAML mapping (apiVersion: pipeline/v1, name: ...), found a string"],
        secrets=("wJalrXUtnFEMI", "hunter2", "ghp_0123", "AWS_SECRET", "DB_PASSWORD"),
    ),
    "symlink-to-500-yaml-secrets": Case(
        symlink_to("secrets.yaml", SECRETS_YAML),
        [
            f"{SPEC}:1: apiVersion: required field is missing; a spec starts with apiVersion: pipeline/v1, and nothing "
            "else is checked without it"
        ],
        secrets=("SECRET_", "value-", "zq"),
    ),
    "symlink-to-json-credentials": Case(
        symlink_to("key.json", SECRETS_JSON),
        [
            f"{SPEC}:1: apiVersion: required field is missing; a spec starts with apiVersion: pipeline/v1, and nothing "
            "else is checked without it"
        ],
        secrets=("PRIVATE KEY", "MIIEvQ", "3f2a9c", "private_key"),
    ),
    "symlink-to-kubernetes-secret": Case(
        symlink_to("secret.yaml", KUBE_SECRET),
        [
            f"{SPEC}:1: apiVersion: must be pipeline/v1, got string 'v1'; nothing else is checked in a file that is not "
            "a pipeline spec"
        ],
        secrets=("aHVudGVyMg", "password", "Secret"),
    ),
    "multi-line-value-is-not-quoted": Case(
        text(mnist("name: sklearn-mnist-svc", "name: |\n  db-password\n  hunter2")),
        [f"{SPEC}:3: name: the value {NAME_RULE}"],
        secrets=("hunter2", "db-password"),
    ),
    "multi-line-list-is-not-quoted": Case(
        text(mnist("  local: {port: 0}", "  local:\n    - hunter2\n    - hunter3")),
        [f"{SPEC}:38: deploy.local: expected a mapping, got a list of 2 items"],
        secrets=("hunter",),
    ),
    "newline-and-escape-in-a-key-stay-on-one-line": Case(
        text(MNIST + '"x\\nspecs/ok.yaml:1: fine\\u001b[2J": 1\n'),
        [f"{SPEC}:39: x\\nspecs/ok.yaml:1: fine\\x1b[2J: {UNKNOWN_HINT}"],
    ),
    # -- too many of anything ------------------------------------------------------------------------------
    "100000-tags": Case(
        text(mnist("tags: {data: MNIST, method: sklearn}\n", many_tags(100_000))),
        [f"{SPEC}:5: tags: more than 10,000 values, far more than a spec holds; nothing else was checked"],
    ),
    "51-tags": Case(
        text(mnist("tags: {data: MNIST, method: sklearn}\n", many_tags(51))),
        [f"{SPEC}:5: tags: at most 50 entries allowed, got 51"],
    ),
    "tag-value-of-257-characters": Case(
        text(mnist("method: sklearn}", "method: " + "s" * 257 + "}")),
        [f"{SPEC}:5: tags.method: length must be <= 256, got 257"],
    ),
    "100000-unknown-flow-keys": Case(
        text(MNIST + "x: {" + ", ".join(f"k{i}" for i in range(100_000)) + "}\n"),
        [f"{SPEC}:39: x: more than 10,000 values, far more than a spec holds; nothing else was checked"],
    ),
    "500-unknown-keys-are-capped-at-20-lines": Case(
        text(unknown_keys(500)),
        sorted([f"{SPEC}:{39 + i}: x-{i}: {UNKNOWN_HINT}" for i in range(20)], key=lambda line: int(line.split(":")[1]))
        + [f"{SPEC}: ... and 480 more problems"],
    ),
    # -- files the spec names: regular files only, and what run would refuse ------------------------------
    "model-source-is-a-directory": Case(
        with_files(
            mnist("../examples/mnist/sklearn_mnist_model.pkl", "../model.pkl"),
            lambda root: (root / "model.pkl").mkdir(),
        ),
        [
            f"{SPEC}:10: model.source: ../model.pkl is a directory, not a regular file "
            "(resolved against the spec's folder: model.pkl)"
        ],
    ),
    "model-source-is-a-device": Case(
        text(mnist("../examples/mnist/sklearn_mnist_model.pkl", "/dev/zero")),
        [f"{SPEC}:10: model.source: /dev/zero is a character device, not a regular file"],
    ),
    "model-source-is-a-symlink-to-a-device": Case(
        with_files(
            mnist("../examples/mnist/sklearn_mnist_model.pkl", "../model.pkl"),
            lambda root: os.symlink("/dev/zero", root / "model.pkl"),
        ),
        [f"{SPEC}:10: model.source: ../model.pkl {DEV_ZERO} (resolved against the spec's folder: {{dev/zero}})"],
    ),
    "test-images-are-a-named-pipe": Case(
        with_files(
            mnist("../examples/mnist/data/test-images.gz", "../images.gz"), lambda root: os.mkfifo(root / "images.gz")
        ),
        [
            f"{SPEC}:25: test.images: ../images.gz is a named pipe (FIFO), not a regular "
            "file (resolved against the spec's folder: images.gz)"
        ],
    ),
    "unpinned-joblib-model": Case(
        text(mnist(f"  sha256: {PIN}\n", "")),
        [
            f"{SPEC}:7: model.sha256: not pinned: loading a joblib file runs code stored in it, so review the file and pin "
            f"its digest in the spec: sha256: {PIN}"
        ],
    ),
    "unpinned-pickle-model": Case(
        text(mnist(f"  sha256: {PIN}\n  format: joblib", "  format: pickle")),
        [
            f"{SPEC}:7: model.sha256: not pinned: loading a pickle file runs code stored in it, so review the file and pin "
            f"its digest in the spec: sha256: {PIN}"
        ],
    ),
    # -- YAML scalars Python cannot hold ---------------------------------------------------------------------
    "a-date-that-does-not-exist": Case(
        text(mnist("description: Predict MNIST with sklearn", "description: 2024-13-45")),
        [f"{SPEC}:4: YAML error: cannot read this timestamp: month must be in 1..12; quote it to make it a string"],
    ),
}


def _capped() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def validate(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "validate", *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_TIMEOUT,
        preexec_fn=_capped,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def case_root(tmp_path: Path) -> Path:
    """A folder with specs/ and the tutorial's examples beside it, as in the repository."""
    (tmp_path / "specs").mkdir()
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    return tmp_path


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_spec_gets_its_lines_and_exit_2_under_a_memory_cap(name: str, case_root: Path) -> None:
    case = CASES[name]
    case.make(case_root)
    result = validate(case_root, SPEC)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    # /dev/zero as seen from the case's folder: ../../../dev/zero, as deep as tmp_path is
    lines = [line.replace(os.path.relpath("/dev/zero", case_root), "{dev/zero}") for line in result.stderr.splitlines()]
    assert lines == case.lines + ["1 of 1 spec(s) invalid"]
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    for secret in case.secrets:
        assert secret not in result.stdout + result.stderr, secret


def test_the_table_covers_the_issue() -> None:
    for listed in (
        "billion-laughs",
        "recursive-alias",
        "symlink-to-dev-zero",
        "named-pipe",
        "integer-of-5000-digits",
        "symlink-to-secrets-env-file",
        "100000-tags",
        "2-MiB-file",
        "model-source-is-a-directory",
        "model-source-is-a-device",
    ):
        assert listed in CASES


def test_the_cap_is_real(case_root: Path) -> None:
    # the same limit stops a process that does allocate: the cases above passed under a cap that bites
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", "b = bytearray(2 << 30)"],
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_TIMEOUT,
        preexec_fn=_capped,
    )
    assert result.returncode != 0 and "MemoryError" in result.stderr


def test_a_spec_at_the_size_limit_is_read(case_root: Path) -> None:
    padding = 1024 * 1024 - len(MNIST.encode()) - 1
    (case_root / SPEC).write_text(MNIST + "#" * padding + "\n", encoding="utf-8")
    assert (case_root / SPEC).stat().st_size == 1024 * 1024
    result = validate(case_root, SPEC)
    assert (result.returncode, result.stderr) == (0, ""), result.stderr


def test_a_spec_reached_through_a_symlink_to_a_regular_file_is_read(case_root: Path) -> None:
    (case_root / "real.yaml").write_text(MNIST.replace("../examples", "examples"))  # relative to where it really is
    os.symlink(case_root / "real.yaml", case_root / SPEC)
    result = validate(case_root, SPEC)
    assert (result.returncode, result.stderr) == (0, ""), result.stderr


def test_every_file_of_a_mixed_run_is_judged_alone(case_root: Path) -> None:
    os.mkfifo(case_root / "specs" / "pipe.yaml")
    (case_root / "specs" / "good.yaml").write_text(MNIST)
    result = validate(case_root, "specs/pipe.yaml", "specs/good.yaml")
    assert result.returncode == 2
    assert result.stdout == "ok  specs/good.yaml  (sklearn-mnist-svc, target local)\n"
    assert result.stderr.splitlines() == [
        "specs/pipe.yaml: is a named pipe (FIFO), not a regular file; a spec must be a regular file",
        "1 of 2 spec(s) invalid",
    ]
