use cluster::prelude::*;

#[handle]
async fn incr(by: u64) -> cluster::Result<u64> {
    Ok(by)
}

fn main() {}
