"""tpu_scripts/resume_after_preemption.sh against a fake `gcloud` (issue 19): it relaunches on exit
status 75, finishes when the done file appears, and stops with a report on any other status
instead of polling forever."""

import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tpu_scripts", "resume_after_preemption.sh")

# The fake gcloud: the VM is READY; each worker's log holds the statuses listed (one per ssh call,
# the last one repeated) in $FAKE/statuses; `storage ls` finds the done file once $FAKE/done exists;
# a launch (an ssh command with "pile-jax train") is recorded in $FAKE/launches and, with
# $FAKE/finish_on_launch, creates the done file.
FAKE_GCLOUD = r'''#!/usr/bin/env bash
case "$*" in
  *"tpu-vm describe"*) echo READY ;;
  *"storage ls"*) [ -e "$FAKE/done" ] ;;
  *"tpu-vm ssh"*"pile-jax train"*) echo "$*" >> "$FAKE/launches"; [ -e "$FAKE/finish_on_launch" ] && touch "$FAKE/done"; true ;;
  *"tpu-vm ssh"*"grep"*)
    n=$(cat "$FAKE/calls" 2>/dev/null || echo 0); echo $((n + 1)) > "$FAKE/calls"
    line=$(sed -n "$((n + 1))p" "$FAKE/statuses"); [ -n "$line" ] || line=$(tail -n 1 "$FAKE/statuses")
    for s in $line; do echo "pile-jax exit status $s"; done ;;
  *) echo "unexpected gcloud $*" >&2; exit 3 ;;
esac
'''


def _watch(tmp_path, statuses, *, finish_on_launch=False):
    fake = tmp_path / "fake"
    (fake / "bin").mkdir(parents=True)
    gcloud = fake / "bin" / "gcloud"
    gcloud.write_text(FAKE_GCLOUD)
    gcloud.chmod(0o755)
    (fake / "statuses").write_text("\n".join(statuses) + "\n")
    if finish_on_launch:
        (fake / "finish_on_launch").touch()
    env = dict(os.environ, PATH=f"{fake / 'bin'}:{os.environ['PATH']}", FAKE=str(fake), WORKDIR="gs://b/run",
               POLL_SECONDS="0", TPU_NAME="t")
    proc = subprocess.run(["bash", SCRIPT, "configs/train_pile.yaml"], env=env, capture_output=True, text=True,
                          timeout=60)
    text = (fake / "launches").read_text() if (fake / "launches").exists() else ""
    launches = [c for c in text.split("--command ")[1:]]   # one per launch (commands span lines)
    return proc, launches


@pytest.mark.parametrize("statuses, reported", [(["2 2"], "status 2"), (["75 1"], "status 1"),
                                                (["0 0"], "status 0 but gs://b/run/test_metrics.json is missing")])
def test_watcher_stops_and_reports_on_any_status_but_75(tmp_path, statuses, reported):
    proc, launches = _watch(tmp_path, statuses)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "stopped: " in proc.stderr and reported in proc.stderr, proc.stderr
    assert launches == []


def test_watcher_relaunches_with_resume_after_status_75_until_done(tmp_path):
    proc, launches = _watch(tmp_path, ["", "75 75"], finish_on_launch=True)   # running, then preempted
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "relaunching with --resume" in proc.stdout and "finished: gs://b/run/test_metrics.json" in proc.stdout
    assert len(launches) == 1 and "--resume" in launches[0]
