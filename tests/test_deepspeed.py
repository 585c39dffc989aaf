"""DeepSpeed ZeRO really trains the phi-1 model, with the ZeRO section our deepspeed trainer config builds.

Lightning's DeepSpeed strategy refuses to fit without CUDA, so on a CPU machine this drives the same
engine through ``deepspeed.initialize`` in a fresh process (DeepSpeed compiles its CPU comm op the first
time, ~40 s). On a GPU machine `trainer=deepspeed` runs the same thing through Lightning.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # DeepSpeed compiles a communication op and trains (~90 s)

SCRIPT = r"""
import json, os, sys
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2], RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
import deepspeed, torch, torch.nn.functional as F
from textbooks.model import ModelConfig, PhiForCausalLM
from textbooks.train.module import param_groups
from textbooks.train.strategies import deepspeed as strategy

stage = int(sys.argv[1])
zero = strategy(stage=stage).config["zero_optimization"]
torch.manual_seed(0)
model = PhiForCausalLM(ModelConfig(name="t", vocab_size=512, n_layer=2, d_model=64, n_head=2, d_mlp=256,
                                   rotary_dim=16, max_seq_len=64))
opt = torch.optim.AdamW(param_groups(model, 0.1), lr=2e-3, betas=(0.9, 0.95), eps=1e-7)
cfg = {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1, "gradient_clipping": 1.0,
       "zero_optimization": zero, "zero_allow_untested_optimizer": True}
engine, opt, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=cfg)
x = torch.randint(0, 512, (4, 33), generator=torch.Generator().manual_seed(0))
losses = []
for _ in range(25):
    loss = F.cross_entropy(engine(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
    engine.backward(loss)
    engine.step()
    losses.append(loss.item())
print(json.dumps({"stage": engine.zero_optimization_stage(), "optimizer": type(engine.optimizer).__name__,
                  "losses": losses}))
"""


@pytest.mark.parametrize("stage", [1, 2])
def test_zero_trains_the_model(stage):
    r = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(stage), str(29500 + stage)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["stage"] == stage and out["optimizer"] == "DeepSpeedZeroOptimizer"
    assert out["losses"][-1] < out["losses"][0] - 1.0  # memorises the batch
