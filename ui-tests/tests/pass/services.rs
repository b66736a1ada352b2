#[cluster::app(
    mode = "spread",
    services(
        http(port = 8080, protocol = "http", path = "/api", tags = ["public", "v1"], weight = 10),
        metrics(port = 9090, path = "/metrics", protocol = "http", metadata(format = "prometheus", "scrape.interval" = "15s")),
        "postgres-wire"(port = 5432, internal),
    )
)]
#[derive(Default)]
pub struct Api;

fn main() {
    // The runtime has no service registry yet: it refuses services clearly.
    let err = cluster::__private::build_app::<Api>().expect_err("refused");
    assert!(err.to_string().contains("services"), "{err}");
}
