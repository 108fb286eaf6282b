"""Staging folders of processes killed with SIGKILL are removed by the next export."""

import signal
import subprocess
import sys
import tempfile

STAGE_AND_HANG = """
import sys, time
from finetuner.io.staging import stage_dir
with stage_dir("export") as folder:
    (folder / "model.safetensors").write_bytes(b"0" * (1 << 20))
    print(folder, flush=True)
    time.sleep(600)
"""


def staging_process():
    """A process that holds a staging folder, as an export does; (process, folder)."""
    process = subprocess.Popen([sys.executable, "-c", STAGE_AND_HANG], stdout=subprocess.PIPE)
    from pathlib import Path

    return process, Path(process.stdout.readline().decode().strip())


def test_a_killed_exports_staging_folder_goes_at_the_next_export(tiny_model, tmp_path, monkeypatch):
    from finetuner.export.publish import export

    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))  # the staging processes' temp dir
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # and this one's
    killed, stale = staging_process()
    alive, held = staging_process()
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        assert stale.parent == temp and stale.name.startswith(f"finetuner-export-pid{killed.pid}-")
        assert (stale / "model.safetensors").exists()  # SIGKILL runs no cleanup
        export(tiny_model(), {"before": {}, "after": {}}, str(tmp_path / "out"))
        assert not stale.exists()
        assert (held / "model.safetensors").exists()  # its process still works in it
        # The export's own staging folder went too.
        assert [p for p in temp.iterdir() if p.name.startswith("finetuner-")] == [held]
    finally:
        alive.kill()
        alive.wait()
