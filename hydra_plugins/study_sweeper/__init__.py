"""The project's Hydra sweeper, `hydra/sweeper=study`: study designs (grid, leave-one-component-out, one factor
at a time), seeds until each interval is narrow enough, and a dry run. Hydra finds it in the `hydra_plugins`
namespace package; `conf/train.yaml` makes it every sweep's sweeper."""
