"""The README's "Run it every night" recipes, for real.

The crontab line is taken from README.md and run by Debian's cron daemon (`cron -f`, a child of
this test) from /etc/cron.d, every minute, in cron's bare environment. Two copies of it, two
"projects" with their own sandbox, fire in the same minute: one finishes, one runs out of
credits. Credits are added, and the next minute both run again. So the test waits for two minute
boundaries: 65-125 s.

Cron mails whatever a job prints, through /usr/sbin/sendmail. A stand-in MTA files each mail in
the test's folder, which proves a successful run printed nothing at all. Where there is no MTA
(CI installs cron without one) the stand-in sits at /usr/sbin/sendmail for the test's duration;
where a real one is installed, it is bind-mounted over it in a mount namespace private to this
cron (unshare), so the machine's mail is never touched.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from batch_runner.sandbox import Sandbox, SandboxConfig
from tests.helpers import REPO, manifest_frame
from tests.hostile import Answer, HostileServer, Seen

README = REPO / "README.md"
CRON_MARK = "<!-- tests/test_cron.py runs this line"
DOC_PROJECT = "/srv/images"
DOC_PROGRAM = "/srv/images/.venv/bin/batch-runner"
DOC_PING = "https://hc-ping.com/your-uuid"
UNITS = Path("/etc/systemd/system")

CRON_D = Path("/etc/cron.d/batch-runner-test")  # cron.d names: no dots; mode 0644, owned by root
SENDMAIL = Path("/usr/sbin/sendmail")  # where Debian's cron sends a job's output
OURS = "# written by tests/test_cron.py"  # marks what the test puts on the machine, to clean up after a kill -9
KEY = "fake-cron-key-not-real"
PRICE = 0.063
SAFE = re.compile(r"[\w/.+-]+")  # paths that go into a shell command line unquoted


# ---- the README's recipes ----


def readme_cron_line() -> str:
    readme = README.read_text(encoding="utf-8")
    assert readme.count(CRON_MARK) == 1
    after = readme.split(CRON_MARK, 1)[1].split("\n", 1)[1]
    assert after.startswith("```crontab\n"), "the marked crontab block must follow the marker"
    block = after.removeprefix("```crontab\n").split("```", 1)[0]
    lines = [line for line in block.splitlines() if line.strip() and not line.startswith("#")]
    assert len(lines) == 1, lines
    return lines[0]


def readme_unit(name: str) -> str:
    readme = README.read_text(encoding="utf-8")
    opening = f"```ini\n# {UNITS / name}\n"
    assert readme.count(opening) == 1, name
    return readme.split(opening, 1)[1].split("```", 1)[0]


def documented_command(line: str) -> list[str]:
    """The batch-runner command of the crontab line, after its `cd DIR &&`."""
    fields = line.split(maxsplit=5)
    assert fields[:5] == ["30", "1", "*", "*", "*"], line
    words = shlex.split(fields[5])
    assert words[:3] == ["cd", DOC_PROJECT, "&&"], line
    return words[3:]


def option(words: list[str], name: str) -> str:
    return words[words.index(name) + 1]


def program() -> str:
    """batch-runner from the environment running the tests, by absolute path: the README's
    .venv/bin/batch-runner, wherever that environment is."""
    script = Path(sys.executable).parent / "batch-runner"
    found = str(script) if os.access(script, os.X_OK) else f"{sys.executable} -m batch_runner"
    assert all(SAFE.fullmatch(part) for part in found.split()), found
    return found


def cron_entry(line: str, project: Path, ping_url: str, endpoint: str) -> str:
    """The documented line for this machine: every minute, as root, in this project. The only
    addition is --endpoint, which points at the sandbox instead of Segmind."""
    assert SAFE.fullmatch(str(project)), project
    command = line.split(maxsplit=5)[5]
    for documented, here in ((DOC_PROGRAM, program()), (DOC_PROJECT, str(project)), (DOC_PING, ping_url)):
        assert documented in command, (documented, line)
        command = command.replace(documented, here)
    assert "%" not in command  # cron would turn it into a line break
    return f"* * * * * root {command} --endpoint {endpoint}\n"


def make_project(root: Path, words: list[str], prompts: list[str]) -> Path:
    """What the crontab line expects under /srv/images: the manifest, its prompt file (next to
    the manifest, as its relative path says) and the key file."""
    job = root / words[words.index("run") + 1]
    job.parent.mkdir(parents=True)
    job.write_text(
        "name: nightly\ndefaults:\n  resolution: RESOLUTION_512_1536\n"
        "grid:\n  prompt: {file: prompts.txt}\nconcurrency: 1\n",
        encoding="utf-8",
    )
    (job.parent / "prompts.txt").write_text("".join(p + "\n" for p in prompts), encoding="utf-8")
    key = root / option(words, "--api-key-file").removeprefix(DOC_PROJECT + "/")
    key.write_text(KEY + "\n", encoding="utf-8")
    key.chmod(0o600)
    return root / option(words, "--output").removeprefix(DOC_PROJECT + "/")


# ---- Debian's cron, and what it leaves ----


def unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the cron test: {reason}")
    pytest.skip(reason)


def processes() -> dict[int, tuple[int, str, str]]:
    """pid -> (parent pid, state, name), from /proc."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        state, ppid = text[text.rindex(")") + 1 :].split()[:2]
        found[int(stat.parent.name)] = (int(ppid), state, name)
    return found


def descendants(pid: int) -> list[int]:
    table = processes()
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        kids = [p for p, (ppid, state, _) in table.items() if ppid == parent and state != "Z"]
        found += kids
        frontier += kids
    return found


def ours(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return OURS.encode() in f.read(4096)
    except OSError:
        return False


def fake_mta(mail_dir: Path) -> str:
    return (
        f"#!{sys.executable} -I\n{OURS}: a stand-in MTA that files each mail cron sends in {mail_dir}\n"
        "import sys, tempfile\n"
        f"with tempfile.NamedTemporaryFile('wb', dir={str(mail_dir)!r}, prefix='mail-', delete=False) as f:\n"
        "    f.write(('X-Sendmail-Args: ' + ' '.join(sys.argv[1:]) + '\\n').encode() + sys.stdin.buffer.read())\n"
    )


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, describe: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} after {timeout:.0f} s\n{describe()}")
        time.sleep(0.25)


class CronDaemon:
    """Debian's cron in the foreground, a child of this test, reading CRON_D; a stand-in MTA
    files the mail it sends."""

    def __init__(self, work: Path):
        self.work = work
        self.mail_dir = work / "mail"
        self.log = work / "cron.log"
        self.proc: subprocess.Popen | None = None
        self.placed_mta = False
        self.wrote_cron_d = False
        self.cron = shutil.which("cron") or next((c for c in ("/usr/sbin/cron",) if os.access(c, os.X_OK)), None)

    def check(self) -> None:
        if not self.cron:
            unavailable("needs Debian's cron: apt-get install --no-install-recommends cron")
        if os.geteuid() != 0:
            unavailable("runs a job from /etc/cron.d under a cron daemon of its own: needs root")
        others = [pid for pid, (_, state, name) in processes().items() if name == "cron" and state != "Z"]
        if others:
            unavailable(f"a cron daemon is running already (pid {others[0]}): stop it, or run this test in a container")
        if os.path.lexists(CRON_D) and not ours(CRON_D):
            unavailable(f"{CRON_D} exists and is not the test's own")
        self.hide_real_mta = os.path.lexists(SENDMAIL) and not ours(SENDMAIL)
        if self.hide_real_mta:
            probe = ["unshare", "--mount", "--propagation", "private", "true"]
            if not shutil.which("unshare") or subprocess.run(probe, capture_output=True).returncode != 0:
                unavailable(
                    f"an MTA is installed ({SENDMAIL}) and this machine cannot give cron a private mount "
                    "namespace (unshare --mount) to put a stand-in over it"
                )

    def start(self, entries: str) -> None:
        self.mail_dir.mkdir(parents=True)
        CRON_D.write_text(f"{OURS}; removed when the test ends\n{entries}", encoding="utf-8")
        CRON_D.chmod(0o644)
        self.wrote_cron_d = True
        command = [self.cron, "-f", "-L", "15"]
        if self.hide_real_mta:
            stand_in = self.work / "sendmail"
            stand_in.write_text(fake_mta(self.mail_dir), encoding="utf-8")
            stand_in.chmod(0o755)
            script = 'mount --bind "$0" /usr/sbin/sendmail && exec "$@"'
            command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(stand_in), *command]
        else:
            SENDMAIL.write_text(fake_mta(self.mail_dir), encoding="utf-8")
            SENDMAIL.chmod(0o755)
            self.placed_mta = True
        if shutil.which("setpriv"):
            command = ["setpriv", "--pdeathsig", "TERM", *command]  # cron dies with the test, even on kill -9
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
            )  # fmt: skip
        wait_until(lambda: processes().get(self.proc.pid, (0, "", ""))[2] == "cron", 10, "cron", self.describe)
        time.sleep(0.5)
        if self.proc.poll() is not None:
            pytest.fail(f"cron exited at once with {self.proc.returncode}\n{self.describe()}")

    def idle(self) -> bool:
        """No job running, and none still being mailed: a zombie child is done, its mail sent."""
        assert self.proc is not None and self.proc.poll() is None, "cron died\n" + self.describe()
        return not any(ppid == self.proc.pid and state != "Z" for ppid, state, _ in processes().values())

    def mails(self) -> list[str]:
        files = sorted(self.mail_dir.glob("mail-*"), key=lambda p: p.stat().st_mtime)
        return [p.read_text(encoding="utf-8", errors="replace") for p in files]

    def describe(self) -> str:
        log = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"cron's own output: {log!r}\nmails:\n" + "\n---\n".join(self.mails())

    def stop(self) -> None:
        if self.wrote_cron_d and ours(CRON_D):
            CRON_D.unlink()
        if self.proc is not None:
            jobs = descendants(self.proc.pid)  # a job still running when the test ends (it failed)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            for pid in jobs:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        if self.placed_mta and ours(SENDMAIL):
            SENDMAIL.unlink()


@pytest.fixture
def cron(tmp_path: Path):
    daemon = CronDaemon(tmp_path / "cron")
    daemon.check()
    try:
        yield daemon
    finally:
        daemon.stop()


def runs(out: Path) -> list[dict]:
    path = out / "runs.jsonl"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]


def pings(monitor: HostileServer, name: str) -> list[str]:
    seen: list[Seen] = list(monitor.seen)
    return [s.path.removeprefix(f"/{name}") or "/" for s in seen if s.path.startswith(f"/{name}")]


# ---- the tests ----


def test_the_readme_crontab_line_runs_under_debian_cron_silent_unless_it_needs_you(tmp_path, cron):
    line = readme_cron_line()
    words = documented_command(line)
    started = time.monotonic()
    with (
        HostileServer(lambda seen: Answer(200, b"OK")) as monitor,
        Sandbox(SandboxConfig(keys=(KEY,), latency_s=0.05)) as rich,
        Sandbox(SandboxConfig(keys=(KEY,), latency_s=0.05, credits=2 * PRICE + 0.001)) as poor,
    ):
        ok, low = tmp_path / "ok", tmp_path / "low"
        ok_out = make_project(ok, words, ["a lighthouse at dawn", "a lighthouse at noon", "a lighthouse at dusk"])
        low_out = make_project(low, words, ["a red kite", "a blue kite", "a green kite", "a gold kite"])
        cron.start(
            cron_entry(line, ok, f"{monitor.url}/ok-uuid", rich.endpoint)
            + cron_entry(line, low, f"{monitor.url}/low-uuid", poor.endpoint)
        )

        def describe() -> str:
            return f"runs: {runs(ok_out)} {runs(low_out)}\npings: {[s.path for s in monitor.seen]}\n{cron.describe()}"

        # The first minute: "ok" finishes and prints nothing; "low" runs out of credits, and cron mails it.
        wait_until(lambda: len(runs(ok_out)) >= 1 and len(runs(low_out)) >= 1, 100, "first runs", describe)
        wait_until(cron.idle, 30, "idle cron", describe)
        first_minute = time.monotonic() - started
        [ok_run], [low_run] = runs(ok_out), runs(low_out)
        assert (ok_run["exit_code"], ok_run["succeeded"], ok_run["pending"]) == (0, 3, 0), describe()
        assert (low_run["exit_code"], low_run["stop_reason"]) == (3, "credits"), describe()
        assert (low_run["succeeded"], low_run["pending"]) == (2, 2)
        mails = cron.mails()
        assert len(mails) == 1, describe()  # the successful run printed nothing at all
        mail = mails[0]
        assert f"cd {low} && " in mail.split("\n\n", 1)[0] and "To: root" in mail  # the subject names the command
        assert "PATH=/usr/bin:/bin" in mail  # cron's bare environment, as the README says
        body = mail.split("\n\n", 1)[1]
        assert "out of credits" in body and "resume with:" in body and str(low_out) in body
        assert KEY not in mail
        assert pings(monitor, "ok-uuid") == ["/start", "/"]
        assert pings(monitor, "low-uuid") == ["/start", "/3"]

        # The next "night": "low" goes on where it stopped and finishes; "ok" has nothing to send.
        poor.api.add_credits(10)
        wait_until(lambda: len(runs(ok_out)) >= 2 and len(runs(low_out)) >= 2, 80, "second runs", describe)
        wait_until(cron.idle, 30, "idle cron", describe)
        ok_again, low_again = runs(ok_out)[1], runs(low_out)[1]
        assert (ok_again["exit_code"], ok_again["succeeded_this_run"]) == (0, 0), describe()
        assert (low_again["exit_code"], low_again["stop_reason"], low_again["succeeded_this_run"]) == (0, None, 2)
        assert (low_again["succeeded"], low_again["pending"]) == (4, 0)
        assert set(manifest_frame(low_out).status) == {"succeeded"} and len(manifest_frame(low_out)) == 4
        assert (rich.stats()["billed"], poor.stats()["billed"]) == (3, 4)  # nothing bought twice
        assert cron.mails() == [mail], describe()  # no mail for either successful run
        assert pings(monitor, "ok-uuid") == ["/start", "/", "/start", "/"]
        assert pings(monitor, "low-uuid") == ["/start", "/3", "/start", "/"]
        assert not [s for s in monitor.seen if KEY in json.dumps(s.headers) or KEY in s.path]
    print(f"cron test: the first minute's runs done after {first_minute:.0f} s, all {time.monotonic() - started:.0f} s")


def test_the_readme_systemd_units_verify_and_run_the_crontab_command(tmp_path):
    service = readme_unit("batch-runner-nightly.service")
    timer = readme_unit("batch-runner-nightly.timer")
    assert "Type=oneshot" in service and "SuccessExitStatus=75" in service
    assert f"WorkingDirectory={DOC_PROJECT}\n" in service
    assert "OnCalendar=*-*-* 01:30\n" in timer and "Persistent=true\n" in timer

    # The same command as the crontab line, but for the progress lines the journal keeps and the
    # key, which the unit passes as a credential (tests/test_systemd_unit.py).
    def settings(words: list[str]) -> list[str]:
        for name in ("--progress", "--log-interval", "--api-key-file"):
            while name in words:
                i = words.index(name)
                words = words[:i] + words[i + 2 :]
        return words

    exec_start = shlex.split(service.split("\nExecStart=", 1)[1].split("\n", 1)[0])
    assert settings(exec_start) == settings(documented_command(readme_cron_line()))
    assert option(exec_start, "--progress") == "log"

    analyze = shutil.which("systemd-analyze")
    if not analyze:
        pytest.skip("systemd-analyze is not installed: the units were not verified")
    # verify wants ExecStart's program to exist: this environment's Python stands in for the .venv.
    (tmp_path / "batch-runner-nightly.service").write_text(service.replace(DOC_PROGRAM, sys.executable))
    (tmp_path / "batch-runner-nightly.timer").write_text(timer)
    units = [str(tmp_path / "batch-runner-nightly.service"), str(tmp_path / "batch-runner-nightly.timer")]
    result = subprocess.run([analyze, "verify", *units], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stderr.strip(), result.stdout + result.stderr
