"""How clients prove who they are: htpasswd files and token-server JWTs (no HTTP here;
the server's auth module applies them to requests)."""
