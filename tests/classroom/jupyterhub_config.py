"""The class's JupyterHub, as a hub administrator would set it up for the course.

Read by ``jupyterhub -f``; ``hub.py`` sets the environment variables it reads. Every learner
is the same OS user with a home folder of their own (``SimpleLocalProcessSpawner``), logs in
through the dummy authenticator, and sees the course (package and data) and the model cache
in one shared folder that is mounted read-only."""

import os

c = get_config()  # noqa: F821 (defined by JupyterHub when it reads this file)

ROOT = os.environ["CLASS_ROOT"]  # the class's folder: hub database, homes, shared folder
SHARED = os.environ["CLASS_SHARED"]  # read-only: course/ (labsupport + data) and cache/

c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = int(os.environ["CLASS_PORT"])  # the proxy: every learner's requests
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = int(os.environ["CLASS_HUB_PORT"])
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{os.environ['CLASS_PROXY_API_PORT']}"
c.ConfigurableHTTPProxy.command = [os.environ["CLASS_CHP"]]  # configurable-http-proxy (npm)
c.ConfigurableHTTPProxy.pid_file = f"{ROOT}/proxy.pid"
c.JupyterHub.db_url = f"sqlite:///{ROOT}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = f"{ROOT}/cookie_secret"

c.JupyterHub.authenticator_class = "dummy"  # any name logs in: for a test, never a real class
c.Authenticator.allow_all = True

c.JupyterHub.spawner_class = "simple"  # SimpleLocalProcessSpawner: one OS user, a home each
c.SimpleLocalProcessSpawner.home_dir_template = f"{ROOT}/home/{{username}}"
c.Spawner.cmd = [os.environ["CLASS_SINGLEUSER"]]  # the course venv's jupyterhub-singleuser
c.Spawner.args = ["--allow-root"] if os.geteuid() == 0 else []
c.Spawner.start_timeout = 300  # seconds: twenty servers start while others run notebooks
c.Spawner.http_timeout = 300
c.Spawner.environment = {
    "PYTHONPATH": f"{SHARED}/course",  # the shared, read-only course before the editable install
    "LABSUPPORT_CACHE": f"{SHARED}/cache",  # the shared, read-only model (guide §6, layout A)
}


def pre_spawn(spawner) -> None:
    """HOME is the learner's own folder: progress, derived caches and Jupyter's runtime go there."""
    spawner.environment["HOME"] = f"{ROOT}/home/{spawner.user.name}"


c.Spawner.pre_spawn_hook = pre_spawn

# The harness is a service: it creates learners, starts their servers and gets their tokens.
c.JupyterHub.services = [{"name": "classroom", "api_token": os.environ["CLASS_TOKEN"]}]
c.JupyterHub.load_roles = [{"name": "classroom", "services": ["classroom"],
                            "scopes": ["admin:users", "admin:servers", "tokens",
                                       "access:servers"]}]
