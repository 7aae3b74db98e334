"""Inference: which frames go to which algorithm service, when (`scheduler`), over HTTP (`client`), to the services
announced on fw.services (`registry`), within each service's capacity shared by every worker (`capacity`) and behind a
circuit breaker per service (`breaker`)."""
