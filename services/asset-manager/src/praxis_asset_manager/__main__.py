from praxis_asset_manager.app import Settings, build_app
from praxis_runtime.service import run

if __name__ == "__main__":
    run(build_app, Settings())
