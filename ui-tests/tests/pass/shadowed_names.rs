// User items named like what generated code uses do not confuse it.
#![allow(dead_code)]

use cluster::prelude::*;

struct Result;
struct Client;
struct Ok;
struct Some;
struct None;
struct Arc;
struct Box;
struct Option;
struct String;
struct Vec;
struct Duration;
struct Mode;
struct Error;
struct Registration;
struct AppSpec;
mod inventory {}
mod serde {}
mod core {}
fn builder() {}

#[cluster::app(mode = "replicas(3)", hook_timeout = "10s", backend = "process:/bin/true")]
#[derive(Default)]
pub struct App;

#[cluster::app]
impl App {
    #[on_start]
    async fn start(&self, _ctx: &AppContext) -> cluster::Result<()> {
        std::result::Result::Ok(())
    }

    #[on_stop]
    async fn stop(&self, ctx: &AppContext) -> cluster::Result<()> {
        let _ = ctx;
        std::result::Result::Ok(())
    }
}

fn main() {}
