"""Calibrate the simulator's cost model: time the real engine's steps and fit
:class:`~jlora.sim.cost_model.CostModel`; see :mod:`jlora.sim.calibration_run` for the flags.

    JAX_PLATFORMS=cpu PYTHONPATH=. python experiments/calibrate_costs.py --model tiny --clock cpu
    PYTHONPATH=. python experiments/calibrate_costs.py --model llama-3.1-8b     # on the H100
    PYTHONPATH=. python experiments/calibrate_costs.py --model llama-3.1-8b --loads-only
"""

from jlora.sim.calibration_run import main

if __name__ == "__main__":
    main()
