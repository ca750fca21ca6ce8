fn main() {
    let object = include_bytes!(concat!(env!("OUT_DIR"), "/tokenscope"));
    println!("{}", object.len());
}
