use std::process::ExitCode;

fn main() -> ExitCode {
    bulwark_agent::cli::main()
}
