"""Run ``prompttune`` under accelerate's FSDP2 or DeepSpeed path on CPU processes (gloo). For tests only.

accelerate hands a model to FSDP or DeepSpeed only on GPU process groups: on CPU workers it sets up plain DDP
(``MULTI_CPU``), and with DeepSpeed it finds no backend. torch's FSDP2 (``fully_shard``) and DeepSpeed's CPU
accelerator both run on gloo, so two changes to accelerate's set-up let CI exercise those paths on a machine
without GPUs:

- FSDP: after accelerate has set up its CPU process group, the state is switched to FSDP with the plugin that
  accelerate built from the config file (what it does on GPUs);
- DeepSpeed: accelerate is told the backend is gloo on CPU processes, so DeepSpeed's own set-up goes ahead.

From ``accelerator.prepare`` on, everything is accelerate's, torch's and DeepSpeed's own code.
Usage: ``accelerate launch --config_file CFG tests/_sharded_on_cpu.py train RUN.yaml ...`` (the prompttune CLI).
"""

import sys

from accelerate import state
from accelerate.utils import DistributedType

_state_init = state.AcceleratorState.__init__
_prepare_backend = state.PartialState._prepare_backend


def _accelerator_state(self, *args, fsdp_plugin=None, **kwargs):
    _state_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin
        if self._mixed_precision != "no":
            fsdp_plugin.set_mixed_precision(self._mixed_precision)


def _backend(self, cpu=False, sagemaker_dp=False, backend=None):
    found, kind = _prepare_backend(self, cpu, sagemaker_dp, backend)
    if kind in (None, DistributedType.NO) and not cpu:  # no GPU here: DeepSpeed runs on its CPU accelerator
        return "gloo", DistributedType.MULTI_CPU
    return found, kind


state.AcceleratorState.__init__ = _accelerator_state
state.PartialState._prepare_backend = _backend

if __name__ == "__main__":
    from prompttune.cli import main

    sys.argv = ["prompttune", *sys.argv[1:]]
    main()
