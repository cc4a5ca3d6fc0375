"""AtomicCheckpointIO: whole files only, a sha256 that ``sha256sum -c`` accepts, failed writes that change
nothing, damaged checkpoints caught before a resume."""

from __future__ import annotations

import errno
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from mmmed.train.checkpoint_io import (AtomicCheckpointIO, CheckpointSaveError, CorruptCheckpointError, checksum_path,
                                 describe_os_error, verified_resume, verify_checkpoint)


def _checkpoint(step: int, numel: int = 1000) -> dict:
    generator = torch.Generator().manual_seed(step)
    return {"global_step": step, "state_dict": {"w": torch.randn(numel, generator=generator)}}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.tmp-*"))


def test_save_writes_the_whole_file_and_a_checksum_sha256sum_accepts(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint(_checkpoint(1), path)
    io.save_checkpoint(_checkpoint(2), path)  # an overwrite: the sidecar must end listing the new file only
    assert checksum_path(path).read_text() == f"{_sha256(path)}  last.ckpt\n"
    assert _leftovers(path.parent) == []
    if shutil.which("sha256sum"):  # coreutils reads the sidecar as its own format
        subprocess.run(["sha256sum", "--check", "--strict", ".checksums/last.ckpt.sha256"], cwd=path.parent, check=True,
                       capture_output=True)
    loaded = io.load_checkpoint(path, weights_only=True)
    assert loaded["global_step"] == 2 and torch.equal(loaded["state_dict"]["w"], _checkpoint(2)["state_dict"]["w"])


# Saves a checkpoint under a file-size limit in a child process and prints how it failed. The limit
# (RLIMIT_FSIZE: writes beyond it fail with EFBIG, as on a full disk) must never be set in pytest's own
# process: it also caps pytest's output file, which then dies with EFBIG itself.
LIMITED_SAVE = """
import resource, signal, sys, torch
from mmmed.train.checkpoint_io import AtomicCheckpointIO, CheckpointSaveError
limit, path = int(sys.argv[1]), sys.argv[2]
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel's SIGXFSZ ends the process
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
state = {"global_step": 3, "state_dict": {"w": torch.randn(100_000, generator=torch.Generator().manual_seed(3))}}
try:
    AtomicCheckpointIO().save_checkpoint(state, path)
except CheckpointSaveError as err:
    print(err.errno)
    print(err)
"""


def _save_with_file_size_limit(limit: int, path: Path) -> tuple[int, str]:
    """(errno, message) of a ~400 kB save to ``path`` in a child process whose files may not exceed ``limit``."""
    proc = subprocess.run([sys.executable, "-c", LIMITED_SAVE, str(limit), str(path)], capture_output=True,
                          text=True, timeout=300, cwd=Path(__file__).resolve().parents[3])
    assert proc.returncode == 0, proc.stderr[-3000:]
    code, message = proc.stdout.strip().split("\n", 1)
    return int(code), message


def test_a_failed_write_leaves_the_previous_checkpoint_intact_and_says_where_to_resume(tmp_path):
    io = AtomicCheckpointIO()
    last, older = tmp_path / "last.ckpt", tmp_path / "s1.ckpt"
    io.save_checkpoint(_checkpoint(1, numel=100), older)
    io.save_checkpoint(_checkpoint(2, numel=100), last)
    before = {str(p.relative_to(tmp_path)): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    small = last.stat().st_size  # ~1.6 kB; the next checkpoint is ~400 kB (100,000 float32)
    code, message = _save_with_file_size_limit(small + 10_000, last)
    assert code == errno.EFBIG
    assert f"file too large (EFBIG) while saving checkpoint {last}; the previous checkpoint {last} is intact; " \
           f"free space and resume with ckpt_path={last}" in message
    # A new file name: the message points at the newest valid checkpoint beside it (step 2).
    _, message = _save_with_file_size_limit(small + 10_000, tmp_path / "s3.ckpt")
    assert f"saving checkpoint {tmp_path / 's3.ckpt'}; the previous checkpoint {last} is intact" in message
    assert {str(p.relative_to(tmp_path)): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before  # nothing changed, no temp files
    verify_checkpoint(last)


def test_a_full_disk_is_called_a_full_disk():
    assert describe_os_error(OSError(errno.ENOSPC, "No space left on device")) == "disk full (ENOSPC)"
    assert describe_os_error(OSError(errno.EIO, "Input/output error")) == "input/output error (EIO)"


def test_truncated_or_altered_checkpoints_are_refused_by_name(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint(_checkpoint(1), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptCheckpointError, match=rf"checkpoint {path} is corrupt: .* truncated or altered"):
        io.load_checkpoint(path)
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x01  # one bit, same size: only the checksum can tell
    path.write_bytes(bytes(flipped))
    with pytest.raises(CorruptCheckpointError, match="is corrupt"):
        verify_checkpoint(path)
    checksum_path(path).unlink()  # written elsewhere, no sidecar: a truncated file still fails to load
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptCheckpointError, match=rf"checkpoint {path} cannot be read .* no \.sha256 file"):
        verify_checkpoint(path)


def test_a_kill_between_the_two_renames_leaves_a_valid_checkpoint(tmp_path):
    """Step 2 of a save lists the new and the old digest; a kill before the rename leaves the old file."""
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint(_checkpoint(1), path)
    old = _sha256(path)
    new = hashlib.sha256(b"the next checkpoint, never renamed into place").hexdigest()
    checksum_path(path).write_text(f"{new}  last.ckpt\n{old}  last.ckpt\n")
    verify_checkpoint(path)
    io.save_checkpoint(_checkpoint(2), path)  # the next save ends with one line again
    assert checksum_path(path).read_text() == f"{_sha256(path)}  last.ckpt\n"


def test_resume_from_a_corrupt_checkpoint_errors_or_takes_the_newest_valid_one(tmp_path, caplog):
    io = AtomicCheckpointIO()
    for step in (1, 2, 3):
        io.save_checkpoint(_checkpoint(step), tmp_path / f"s{step}.ckpt")
    io.save_checkpoint(_checkpoint(3), tmp_path / "last.ckpt")
    last = tmp_path / "last.ckpt"
    assert verified_resume(str(last), "error") == str(last)
    last.write_bytes(last.read_bytes()[:100])
    with pytest.raises(CorruptCheckpointError, match=rf"checkpoint {last} is corrupt.*resume_corrupt=previous"):
        verified_resume(str(last), "error")
    assert verified_resume(str(last), "previous") == str(tmp_path / "s3.ckpt")  # same step, intact
    assert "resuming from" in caplog.text
    (tmp_path / "s3.ckpt").write_bytes(b"not a checkpoint")
    assert verified_resume(str(last), "previous") == str(tmp_path / "s2.ckpt")
    assert verified_resume("hpc", "error") == "hpc" and verified_resume(None, "error") is None  # Lightning's to find
    with pytest.raises(ValueError, match="resume_corrupt must be 'error' or 'previous'"):
        verified_resume(str(last), "skip")


class _Linear(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_hpc_checkpoint_numbering_ignores_sidecars(tmp_path):
    """Lightning numbers a requeued SLURM job's checkpoints by the digits of every name holding "ckpt_" in the
    folder: a sidecar beside hpc_ckpt_1.ckpt would make it look for hpc_ckpt_1256.ckpt."""
    from lightning.pytorch.trainer.connectors.checkpoint_connector import _CheckpointConnector

    io = AtomicCheckpointIO()
    io.save_checkpoint(_checkpoint(1), tmp_path / "hpc_ckpt_1.ckpt")
    assert _CheckpointConnector.hpc_save_path(tmp_path) == str(tmp_path / "hpc_ckpt_2.ckpt")
    io.save_checkpoint(_checkpoint(2), tmp_path / "hpc_ckpt_2.ckpt")
    assert _CheckpointConnector.hpc_save_path(tmp_path) == str(tmp_path / "hpc_ckpt_3.ckpt")


def test_lightning_writes_every_checkpoint_and_last_ckpt_through_it(tmp_path):
    """ModelCheckpoint (top-k, save_last) and trainer.save_checkpoint all write through the plugin; the
    checkpoints top-k removes take their sidecars with them."""
    saver = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_top_k=2, monitor="step", mode="max",
                            save_last=True, filename="s{step}", auto_insert_metric_name=False)
    trainer = L.Trainer(max_steps=4, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[saver], plugins=[AtomicCheckpointIO()])
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 4)), batch_size=2)
    trainer.fit(_Linear(), data)
    trainer.save_checkpoint(tmp_path / "end.ckpt")
    names = ("s3.ckpt", "s4.ckpt", "last.ckpt", "end.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*names, ".checksums"])
    assert sorted(p.name for p in (tmp_path / ".checksums").iterdir()) == sorted(f"{n}.sha256" for n in names)
    for ckpt in tmp_path.glob("*.ckpt"):
        assert checksum_path(ckpt).read_text() == f"{_sha256(ckpt)}  {ckpt.name}\n"
