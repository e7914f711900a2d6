use clap::Parser;

/// `train`: the flags and the run live in [`train::cli`]; here only the process set-up.
fn main() -> std::process::ExitCode {
    kernels::runtime::main(|| -> anyhow::Result<()> {
        let cli = train::cli::Cli::parse();
        kernels::runtime::set_jobs(cli.jobs)?;
        train::cli::run(&cli)?;
        Ok(())
    })
}
