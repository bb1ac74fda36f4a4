# GPU image of glm-serve for a Ray cluster: Ray's own GPU image (CUDA, Python 3.11, Ray at
# the version pyproject.toml pins) with glm-serve and vLLM installed. Every node of the
# cluster runs it (deploy/kuberay/rayservice.yaml); the model is not in the image but on a
# volume mounted at /models on every GPU node, so its path is the same wherever a replica runs.
#
#   docker build -t glm-serve:0.1.0 .
FROM rayproject/ray:2.60.0-py311-gpu

WORKDIR /home/ray/glm-serve
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users deployments ./deployments
# The client distribution (glm-serve-client: glm_client and chat_formats), which glm-serve requires.
COPY --chown=ray:users glm_client ./glm_client
COPY --chown=ray:users benchmarks ./benchmarks
COPY --chown=ray:users config ./config
# Installed, not editable: `deployments.app:build_app` imports from site-packages in every
# Ray worker, whatever its working directory. Both projects in one pip command, so that
# glm-serve's glm-serve-client requirement is met by ./glm_client.
RUN pip install --no-cache-dir ./glm_client '.[gpu]'

# Serve's HTTP port; Ray's own ports come with the base image.
EXPOSE 8000
