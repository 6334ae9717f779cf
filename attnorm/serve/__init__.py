"""``attnorm serve``: a local web app (inpaint by painting a mask, explore the class-conditional
generator) and the HTTP API it uses. See :mod:`attnorm.serve.server` for the routes and
:mod:`attnorm.serve.app` for what they do; model code is imported through :mod:`attnorm.serve.models`."""
