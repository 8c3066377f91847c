"""The CUDA path (bf16 autocast, torch.compile, fused AdamW); skipped on machines without a GPU."""
import pyarrow.parquet as pq
import pytest
import torch

from conftest import tiny_config
from ray_grok.trial.run import run_trial

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; this machine has none"),
]


@pytest.mark.parametrize("compile_", ["off", "on"])
def test_tiny_config_learns_on_cuda(tmp_path, compile_):
    cfg = tiny_config("runtime.device=cuda", f"runtime.compile={compile_}", "train.steps=300", "eval.every=100")
    run_trial(cfg, tmp_path, echo=lambda s: None)
    rows = pq.read_table(tmp_path / "metrics.parquet").to_pylist()
    assert rows[-1]["id_train_acc"] > 0.5


class Interrupt(Exception):
    pass


def test_interrupted_cuda_trial_resumes(tmp_path):
    cfg = tiny_config("runtime.device=cuda", "train.steps=200", "eval.every=50", "checkpoint.every=50")

    def stop_at_100(row, *, checkpointed, step):
        if step == 100:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_trial(cfg, tmp_path, reporter=stop_at_100, echo=lambda s: None)
    messages = []
    run_trial(cfg, tmp_path, echo=messages.append)
    assert messages[0] == f"resuming {tmp_path} from step 100"
    rows = pq.read_table(tmp_path / "metrics.parquet").to_pylist()
    assert [r["step"] for r in rows] == [1, 50, 100, 150, 200]
