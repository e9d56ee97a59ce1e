"""HTTP routers, one module per concern; ``service.app.create_app`` includes them."""
