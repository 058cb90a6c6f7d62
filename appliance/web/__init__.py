"""HTTP pieces shared by the daemon's APIs: errors, authentication, TLS."""
