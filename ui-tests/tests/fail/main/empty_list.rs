cluster::main!(apps = []);
