"""``python -m tokenscale.sim engine ...`` - the simulator without the main CLI."""

from .cli import sim_group

if __name__ == "__main__":
    sim_group()
