"""The Python API: the tutorial's notebook, step by step, on a spec; every CLI command is built on it.

    p = pipeline.load("specs/mnist.yaml")
    p.plan()                              # the Plan `plan` prints (a table in Jupyter)
    r = p.run(to="evaluate")              # r.evaluation.accuracy, .confusion, .confusion_figure()
    r = p.run()                           # r.smoke.agree, r.smoke.samples_figure()
    svc = p.service                       # svc.scoring_uri, svc.run(input_data=...), svc.delete()

Errors are the CLI's: SpecError, UsageError, StateLocked, ... with the messages the CLI prints. Each call
reads the spec file and the state again, as each command does, so a notebook sees edits made beside it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import backends, project
from pipeline import spec as specs
from pipeline import state as states
from pipeline.backends.document import StateDocument
from pipeline.console import Console
from pipeline.context import Context
from pipeline.errors import RunFailed, UsageError
from pipeline.records import Plan, Result, Status
from pipeline.stages import STAGES

if TYPE_CHECKING:
    import numpy as np

    from pipeline.results import EvaluationResult, SmokeResult
    from pipeline.webservice import Service


def load(
    spec: str | os.PathLike[str], *, state: str | None = None, console: Console | None = None, check_files: bool = True
) -> Pipeline:
    """Load and validate a spec (a SpecError names every problem, file:line: field: message).

    `state`: where the state lives (`local`, azureblob://...), as --state; `console`: where progress goes
    (by default a notebook's output area, or the terminal).
    """
    loaded = specs.load(spec, check_files=check_files)
    return Pipeline(loaded, shown=os.fspath(spec), state_url=state, console=console, check_files=check_files)


def validate(spec: str | os.PathLike[str]) -> Validation:
    """Validate one spec file: a Validation, or a SpecError with every problem (what `validate` prints)."""
    loaded = specs.load(spec)
    return Validation(os.fspath(spec), loaded.name, loaded.deploy.target)


def paths_for(
    spec: specs.Spec, state_url: str | None, shown: str, *, choice: backends.Choice | None = None
) -> states.Paths:
    """The spec's local folder at its project root, and its state document in the chosen backend."""
    choice = choice or backends.choose(spec.state, state_url)
    home = project.home(spec.path)
    document = StateDocument(
        backends.open_backend(choice, home),
        spec.name,
        home / spec.name,
        reports=project.reports_root(spec.path) / spec.name,
        project=project.root_of(spec.path),
        spec_arg=str(shown),
    )
    return states.Paths(home / spec.name, document)


def selection(
    *, force: bool = False, only: str | None = None, from_stage: str | None = None, to: str | None = None
) -> Any:
    """A runner Selection from keyword arguments, checked as the CLI checks its flags."""
    from pipeline.runner import Selection

    for name, value in (("only", only), ("from_stage", from_stage), ("to", to)):
        if value is not None and value not in STAGES:
            raise UsageError(f"{name}={value!r} is not a stage; the stages are {', '.join(STAGES)}")
    if only and to:
        raise UsageError("--only cannot be combined with --to")
    return Selection(force=force, only=only, from_stage=from_stage, to_stage=to)


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None  # gone: loading it again says so, as a SpecError
    return (st.st_mtime_ns, st.st_size, st.st_ino)


@dataclass(frozen=True)
class Validation:
    """A spec that passed validation: what `validate` prints for it."""

    path: str
    name: str
    target: str

    def __str__(self) -> str:
        return f"ok  {self.path}  ({self.name}, target {self.target})"

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.path, "valid": True, "errors": [], "name": self.name, "target": self.target}

    def _repr_markdown_(self) -> str:
        return f"**ok** `{self.path}` ({self.name}, target `{self.target}`)\n"


class Pipeline:
    """One spec, its state and its service: what the commands do, as methods."""

    def __init__(
        self,
        spec: specs.Spec,
        *,
        shown: str,
        state_url: str | None = None,
        console: Console | None = None,
        check_files: bool = True,
    ) -> None:
        self.spec = spec
        self.shown = shown  # the spec as the user named it: in messages and the run history
        self.state_url = state_url
        self.check_files = check_files
        self._console = console
        self._stamp = _stamp(spec.path)  # the file as it was read: read again only once it changed

    def __repr__(self) -> str:
        return f"<Pipeline {self.spec.name} ({self.shown}), target {self.spec.deploy.target}>"

    def console(self) -> Console:
        """The console given, else a new one for this call (in Jupyter, a new output area)."""
        from pipeline import jupyter

        return self._console if self._console is not None else jupyter.console()

    def reload(self, *, check_files: bool | None = None, force: bool = False) -> specs.Spec:
        """The spec, read and validated again if its file changed since it was read (or when forced)."""
        check = self.check_files if check_files is None else check_files
        stamp = _stamp(self.spec.path)
        if force or stamp != self._stamp or (check and not self.check_files) or stamp is None:
            self.spec = specs.load(self.spec.path, check_files=check)
            self._stamp, self.check_files = stamp, check
        return self.spec

    @property
    def paths(self) -> states.Paths:
        return paths_for(self.spec, self.state_url, self.shown)

    def context(
        self, console: Console | None = None, *, check_files: bool | None = None, adopt: bool = False
    ) -> Context:
        """The stage context of a command: the spec read again, its paths, its state as recorded now.

        A service name belongs to the spec file that made it: another spec of the same name is refused here,
        unless `adopt` (the spec was renamed or moved).
        """
        from pipeline import service

        self.reload(check_files=check_files)
        paths = self.paths
        ctx = Context(spec=self.spec, paths=paths, state=states.load(paths), console=console or self.console())
        service.check_owner(ctx, adopt=adopt)
        return ctx

    # -- the commands ---------------------------------------------------------------------------
    def validate(self) -> Validation:
        """Read and validate the spec file again; a SpecError lists every problem."""
        spec = self.reload(check_files=True, force=True)
        return Validation(self.shown, spec.name, spec.deploy.target)

    def render(self, output: str | os.PathLike[str] | None = None) -> dict[str, str]:
        """score.py, myenv.yml and the target's configs as {file name: text}; written into `output` if given."""
        from pipeline import render

        files = render.render_all(self.reload())
        if output is not None:
            render.write_files(Path(output), files)
        return files

    def plan(
        self,
        *,
        force: bool = False,
        only: str | None = None,
        from_stage: str | None = None,
        to: str | None = None,
        console: Console | None = None,
    ) -> Plan:
        """What `run` would do, stage by stage, and why; for deploy the action and the field-level diff."""
        from pipeline import runner

        chosen = selection(force=force, only=only, from_stage=from_stage, to=to)
        ctx = self.context(console)
        return runner.plan(ctx.spec.name, ctx.state, runner.gather(ctx), chosen)

    def run(
        self,
        *,
        to: str | None = None,
        only: str | None = None,
        from_stage: str | None = None,
        force: bool = False,
        cleanup: bool = False,
        lock_timeout: float = 0.0,
        check: bool = True,
        adopt: bool = False,
        console: Console | None = None,
    ) -> RunResult:
        """Bring the service to the spec's state: the stages whose inputs changed, one line each as they finish.

        A failed stage raises RunFailed (its `result` holds what ran) unless check=False; either way the state
        and the report are written first.
        """
        from pipeline import runner

        chosen = selection(force=force, only=only, from_stage=from_stage, to=to)
        start = time.perf_counter()
        out = console or self.console()
        from pipeline import service

        ctx = self.context(out, adopt=adopt)
        command = f"run {self.shown}"
        with states.locked(ctx.paths, command, timeout=lock_timeout, notify=out.error):
            ctx.state = states.load(ctx.paths)  # read again under the lock
            service.check_owner(ctx, adopt=adopt)
            service.claim(ctx)  # this spec file owns the service name from now on
            the_plan = runner.plan(ctx.spec.name, ctx.state, runner.gather(ctx), chosen)
            results = runner.execute(ctx, the_plan, command=command, cleanup=cleanup)
        result = RunResult(self, ctx, the_plan, results, time.perf_counter() - start)
        if check and result.failed is not None:
            raise RunFailed(f"run failed at {result.failed.stage}: {result.failed.detail}", result)
        return result

    def status(self, *, show_keys: bool = False) -> dict[str, Any]:
        """What `status --json` prints: the live probe, the record, the last smoke test and run."""
        from pipeline import webservice

        return webservice.status(self, show_keys=show_keys)

    @property
    def service(self) -> Service | None:
        """The deployed service (the tutorial's `service`), or None when nothing is deployed."""
        from pipeline.webservice import Service

        ctx = self.context(Console(quiet=True), check_files=False)
        record = ctx.service
        return Service(self, record) if record is not None else None

    def delete(self, *, lock_timeout: float = 0.0, adopt: bool = False) -> str | None:
        """Stop and remove the service (the tutorial's service.delete()); None when nothing was deployed."""
        from pipeline import webservice

        return webservice.delete(self, lock_timeout=lock_timeout, adopt=adopt)

    def test_data(self) -> tuple[np.ndarray, np.ndarray]:
        """The spec's test set as the stages see it: X scaled by test.scale (the tutorial's X / 255), and y."""
        ds = self._dataset()
        return ds.rows(0, ds.n), ds.y

    def _dataset(self) -> Any:
        from pipeline import data

        test = self.spec.test
        return data.load_dataset(
            test.images, test.labels, format=test.format, label_column=test.label_column, scale=test.scale
        )

    def _rows(self, indices: Sequence[int]) -> Any:
        import numpy as np

        ds = self._dataset()
        return np.stack([ds.rows(i, i + 1)[0] for i in indices])

    def _repr_markdown_(self) -> str:
        return f"pipeline for **{self.spec.name}** (`{self.shown}`), target `{self.spec.deploy.target}`\n"


@dataclass
class RunResult:
    """What a run did: one Result per stage, the evaluation and smoke test as typed records, the service."""

    pipeline: Pipeline
    context: Context = field(repr=False)
    plan: Plan = field(repr=False)
    stages: list[Result]
    seconds: float

    def __repr__(self) -> str:
        ran = sum(r.status is Status.RAN for r in self.stages)
        verdict = f"failed at {self.failed.stage}" if self.failed else "done"
        return f"<RunResult {self.context.spec.name}: {verdict} in {self.seconds:.1f} s, {ran} stage(s) ran>"

    @property
    def failed(self) -> Result | None:
        return next((r for r in self.stages if r.status is Status.FAILED), None)

    @property
    def ok(self) -> bool:
        return self.failed is None

    @property
    def exit_code(self) -> int:
        """What `run` exits with: 0, or 1 when a stage failed."""
        return 0 if self.ok else 1

    @property
    def evaluation(self) -> EvaluationResult | None:
        """This run's evaluation, else the last successful one (a skipped evaluate stage), else None."""
        from pipeline.results import EvaluationResult
        from pipeline.stages.evaluate import EvaluateOutput

        out = self.context.output(EvaluateOutput)
        return EvaluationResult.of(out) if out is not None else None

    @property
    def smoke(self) -> SmokeResult | None:
        """This run's smoke test, else the last successful one, else None."""
        from pipeline.results import SmokeResult
        from pipeline.stages.smoke import SmokeOutput

        out = self.context.output(SmokeOutput)
        rows: Callable[[Sequence[int]], Any] = self.pipeline._rows
        return SmokeResult.of(out, self.context.spec.scoring.output, rows) if out is not None else None

    @property
    def service(self) -> Service | None:
        from pipeline.webservice import Service

        record = self.context.service
        return Service(self.pipeline, record) if record is not None else None

    @property
    def report(self) -> Path | None:
        """report.md, if this run wrote it."""
        from pipeline.stages.report import ReportOutput

        out = self.context.outputs.get("report")
        return Path(out.dir) / "report.md" if isinstance(out, ReportOutput) else None

    def markdown(self) -> str:
        """The report's Markdown: report.md as this run wrote it, else the same report made from this run."""
        from pipeline.stages import report

        written = self.report
        if written is not None and written.is_file():
            return written.read_text(encoding="utf-8")
        return report.compose(self.context)[1]

    def _repr_markdown_(self) -> str:
        lines = ["| stage | status | seconds | detail |", "|---|---|---|---|"]
        for r in self.stages:
            first = r.detail.split("\n", 1)[0].replace("|", "\\|")
            seconds = f"{r.seconds:.2f}" if r.status in (Status.RAN, Status.FAILED) else ""
            lines.append(f"| {r.stage} | {r.status} | {seconds} | {first} |")
        service = self.context.service
        where = f"; service `{service.scoring_uri}`" if service is not None and service.scoring_uri else ""
        verdict = f"failed at {self.failed.stage}" if self.failed else "done"
        return "\n".join(lines) + f"\n\n{verdict} in {self.seconds:.1f} s{where}\n"
