fn main() -> std::process::ExitCode {
    bulwark_control_plane::cli::main()
}
