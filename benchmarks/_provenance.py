"""What the benchmark scripts record next to every figure about the code they measured
(the helpers live in the library: :func:`attnorm.provenance.git_commit`, :func:`~attnorm.provenance.cpu_model`)."""

from attnorm.provenance import cpu_model, git_commit

__all__ = ["cpu_model", "git_commit"]
