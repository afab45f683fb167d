from praxis_audit.app import Settings, build_app
from praxis_runtime.service import run
from praxis_runtime.settings import load_settings

if __name__ == "__main__":
    run(build_app, load_settings(Settings))
