from praxis_runtime.service import run
from praxis_runtime.settings import load_settings
from praxis_scheduler.app import Settings, build_app

if __name__ == "__main__":
    run(build_app, load_settings(Settings))
