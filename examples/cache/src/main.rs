//! Sharded cache: 64 partitions spread over every node running it; entries
//! move with their partitions when nodes join or leave.
//!
//! Run two or three of these against one NATS, then put and get through any
//! NATS client. A key's partition is `xxh3_64(key) mod 64`
//! (`docs/ring-partitions.json`); `user:1` is in partition 1:
//!
//! ```sh
//! cache --nats nats://127.0.0.1:4222 --node n1 --health-addr 127.0.0.1:8081 &
//! cache --nats nats://127.0.0.1:4222 --node n2 --health-addr 127.0.0.1:8082 &
//! nats req default._.api.cache.p.1.put '{"key":"user:1","value":"Ada"}'
//! nats req default._.api.cache.p.1.get '{"key":"user:1"}'
//! curl -s 127.0.0.1:8081/status   # "partitions": what n1 owns
//! ```
//!
//! Stop one node (Ctrl-C): its partitions, with their entries, move to the
//! other without a failed call.

// The app lives in the library (so tests can use it); naming it here keeps
// the linker from dropping its registration.
cluster::main!(apps = [cache::Cache]);
