"""What the benchmark scripts record next to every figure about the code they measured
(one helper, in the library: :func:`attnorm.provenance.git_commit`)."""

from attnorm.provenance import git_commit  # noqa: F401
