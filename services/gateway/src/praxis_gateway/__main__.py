from praxis_gateway.app import Settings, serve

if __name__ == "__main__":
    serve(Settings())
