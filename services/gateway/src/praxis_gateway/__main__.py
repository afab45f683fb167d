from praxis_gateway.app import Settings, serve
from praxis_runtime.settings import load_settings

if __name__ == "__main__":
    serve(load_settings(Settings))
