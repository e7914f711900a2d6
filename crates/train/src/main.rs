fn main() -> std::process::ExitCode {
    eprintln!("error: this stage is not implemented yet");
    std::process::ExitCode::from(2)
}
