//! Shell completion scripts, generated from the clap definition of the command line so that they
//! never fall out of step with it.

use clap::Command;
use clap_complete::Shell;

/// The name the scripts complete: the installed binary's, whatever the clap `Command` is called.
pub const BINARY_NAME: &str = "seq2seq";

/// Writes the completion script for `shell` to `out`. Pass `Cli::command()`.
///
/// clap_complete reports no errors: it panics on a write failure (as `print!` does) and on an
/// inconsistent `Command`, which the clap debug asserts in the test suite already rule out.
pub fn write_completions(shell: Shell, command: &mut Command, out: &mut dyn std::io::Write) {
    clap_complete::generate(shell, command, BINARY_NAME, out);
}

#[cfg(test)]
mod tests {
    use clap::Arg;

    use super::*;

    /// A stand-in for the real `Cli::command()`, which lives in a file being restructured.
    fn small_command() -> Command {
        Command::new("anything")
            .subcommand(Command::new("train").about("Train a model").arg(Arg::new("samples").long("samples")))
            .subcommand(Command::new("predict").about("Run a trained model"))
    }

    fn script_for(shell: Shell) -> String {
        let mut out = Vec::new();
        write_completions(shell, &mut small_command(), &mut out);
        String::from_utf8(out).expect("completion scripts are UTF-8")
    }

    #[test]
    fn bash_script_completes_the_binary_and_its_subcommands() {
        let script = script_for(Shell::Bash);
        assert!(!script.is_empty());
        assert!(script.contains("seq2seq") && script.contains("train") && script.contains("--samples"), "{script}");
    }

    #[test]
    fn zsh_script_completes_the_binary_and_its_subcommands() {
        let script = script_for(Shell::Zsh);
        assert!(script.starts_with("#compdef seq2seq"), "{script}");
        assert!(script.contains("train") && script.contains("predict"), "{script}");
    }

    #[test]
    fn every_shell_gets_a_script() {
        for shell in [Shell::Bash, Shell::Elvish, Shell::Fish, Shell::PowerShell, Shell::Zsh] {
            assert!(script_for(shell).contains("train"), "{shell}");
        }
    }
}
