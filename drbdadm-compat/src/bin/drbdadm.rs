//! `drbdadm`, the DRBD-compatible front end.

fn main() {
    eprintln!("drbdadm: no commands are implemented yet");
    std::process::exit(20);
}
