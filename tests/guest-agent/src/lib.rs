//! Both ends of the testbed's network and vsock checks. The `guest-agent` binary runs in the
//! nested guest; the host-side tests (`vmm/tests/linux_net.rs`) use this library, so both
//! ends share one definition of each protocol.
//!
//! * **Exchange** (TCP, across suspends): the host sends a round header and `len` bytes of
//!   [`pattern`] (seed `2 * round`); the guest checks every byte against the pattern, answers
//!   with its verdict and `len` bytes of its own pattern (seed `2 * round + 1`), which the host
//!   checks. A byte lost, duplicated, reordered or corrupted in either direction fails the
//!   round at its offset.
//! * **Agent** (vsock): one command per connection. The client sends one line, the agent runs
//!   it with `/bin/sh -c` and answers `EXIT <code> <len>\n` and `len` bytes of its standard
//!   output and error, then closes.
//! * **Hybrid vsock** (host side): a host program reaches guest port P through the VMM's Unix
//!   socket by sending `CONNECT P\n` and reading `OK <host port>\n` (Firecracker's protocol).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// The first word of an exchange round header.
pub const EXCHANGE_MAGIC: u32 = u32::from_le_bytes(*b"XCHG");
/// The largest command line the agent reads.
pub const COMMAND_MAX: usize = 4096;

/// Fills `buffer` with the pattern of `seed` from stream offset `offset`: every byte depends
/// on its position, so a shifted, repeated or missing byte does not match.
pub fn pattern(seed: u64, offset: u64, buffer: &mut [u8]) {
    for (index, byte) in buffer.iter_mut().enumerate() {
        let position = offset + index as u64;
        let word = splitmix64(seed.wrapping_mul(0x1000_0000_01b3) ^ (position / 8));
        *byte = word.to_le_bytes()[(position % 8) as usize];
    }
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Reads `len` bytes from `reader` and compares them with the pattern of `seed`; returns the
/// offset of the first mismatch, if any (the rest is still read).
pub fn read_pattern(reader: &mut impl Read, seed: u64, len: u64) -> io::Result<Option<u64>> {
    let mut got = vec![0u8; 64 * 1024];
    let mut want = vec![0u8; got.len()];
    let (mut offset, mut first_bad) = (0u64, None);
    while offset < len {
        let chunk = (len - offset).min(got.len() as u64) as usize;
        reader.read_exact(&mut got[..chunk])?;
        pattern(seed, offset, &mut want[..chunk]);
        if first_bad.is_none() {
            if let Some(at) = got[..chunk]
                .iter()
                .zip(&want[..chunk])
                .position(|(a, b)| a != b)
            {
                first_bad = Some(offset + at as u64);
            }
        }
        offset += chunk as u64;
    }
    Ok(first_bad)
}

/// Writes `len` bytes of the pattern of `seed`.
pub fn write_pattern(writer: &mut impl Write, seed: u64, len: u64) -> io::Result<()> {
    let mut buffer = vec![0u8; 64 * 1024];
    let mut offset = 0u64;
    while offset < len {
        let chunk = (len - offset).min(buffer.len() as u64) as usize;
        pattern(seed, offset, &mut buffer[..chunk]);
        writer.write_all(&buffer[..chunk])?;
        offset += chunk as u64;
    }
    writer.flush()
}

/// How one exchange round went, as the host saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoundReport {
    /// The first byte the guest received wrong, if any.
    pub guest_bad_offset: Option<u64>,
    /// The first byte the host received wrong, if any.
    pub host_bad_offset: Option<u64>,
}

impl RoundReport {
    /// Whether both directions arrived intact.
    pub fn ok(&self) -> bool {
        self.guest_bad_offset.is_none() && self.host_bad_offset.is_none()
    }
}

/// The host's side of round `round`: sends `len` bytes, reads the guest's verdict and its
/// `len` bytes.
pub fn exchange_as_host(
    stream: &mut (impl Read + Write),
    round: u32,
    len: u64,
) -> io::Result<RoundReport> {
    let mut header = [0u8; 16];
    header[..4].copy_from_slice(&EXCHANGE_MAGIC.to_le_bytes());
    header[4..8].copy_from_slice(&round.to_le_bytes());
    header[8..].copy_from_slice(&len.to_le_bytes());
    stream.write_all(&header)?;
    write_pattern(stream, 2 * u64::from(round), len)?;
    let mut reply = [0u8; 16];
    stream.read_exact(&mut reply)?;
    let word = |range: std::ops::Range<usize>| u64::from_le_bytes(reply[range].try_into().unwrap());
    let (echoed_round, bad) = (word(0..8), word(8..16));
    if echoed_round != u64::from(round) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the guest answered round {echoed_round} to round {round}"),
        ));
    }
    let host_bad_offset = read_pattern(stream, 2 * u64::from(round) + 1, len)?;
    Ok(RoundReport {
        guest_bad_offset: (bad != u64::MAX).then_some(bad),
        host_bad_offset,
    })
}

/// The guest's side of one round: `Ok(None)` when the host closed the connection.
pub fn exchange_as_guest(stream: &mut (impl Read + Write)) -> io::Result<Option<(u32, u64, bool)>> {
    let mut header = [0u8; 16];
    match stream.read_exact(&mut header) {
        Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        other => other?,
    }
    let magic = u32::from_le_bytes(header[..4].try_into().unwrap());
    let round = u32::from_le_bytes(header[4..8].try_into().unwrap());
    let len = u64::from_le_bytes(header[8..].try_into().unwrap());
    if magic != EXCHANGE_MAGIC || len > 1 << 30 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bad exchange header",
        ));
    }
    let bad = read_pattern(stream, 2 * u64::from(round), len)?;
    let mut reply = [0u8; 16];
    reply[..8].copy_from_slice(&u64::from(round).to_le_bytes());
    reply[8..].copy_from_slice(&bad.unwrap_or(u64::MAX).to_le_bytes());
    stream.write_all(&reply)?;
    write_pattern(stream, 2 * u64::from(round) + 1, len)?;
    Ok(Some((round, len, bad.is_none())))
}

/// Connects to guest port `port` through the VMM's hybrid vsock socket at `socket`.
pub fn connect_hybrid(socket: &Path, port: u32, timeout: Duration) -> io::Result<UnixStream> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(format!("CONNECT {port}\n").as_bytes())?;
    // Byte by byte: what follows the line is the guest's, and must not be read ahead.
    let mut line = Vec::new();
    let mut byte = [0u8];
    while line.len() < 64 {
        if stream.read(&mut byte)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("the VMM closed the connection to guest port {port}"),
            ));
        }
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
    }
    let line = String::from_utf8_lossy(&line);
    match line.strip_prefix("OK ") {
        Some(host_port) if host_port.parse::<u32>().is_ok() => Ok(stream),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected answer to CONNECT: {line:?}"),
        )),
    }
}

/// What the agent answered to a command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandOutput {
    /// The shell's exit status.
    pub code: i32,
    /// Standard output and error, interleaved.
    pub output: Vec<u8>,
}

/// Runs `command` through the agent on the other end of `stream`.
pub fn run_command(mut stream: impl Read + Write, command: &str) -> io::Result<CommandOutput> {
    if command.contains('\n') || command.len() >= COMMAND_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "bad command line",
        ));
    }
    stream.write_all(format!("{command}\n").as_bytes())?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let invalid = || io::Error::new(io::ErrorKind::InvalidData, format!("bad reply {line:?}"));
    let mut words = line.split_whitespace();
    let (Some("EXIT"), Some(code), Some(len), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return Err(invalid());
    };
    let code = code.parse().map_err(|_| invalid())?;
    let len: usize = len.parse().map_err(|_| invalid())?;
    let mut output = vec![0u8; len];
    reader.read_exact(&mut output)?;
    Ok(CommandOutput { code, output })
}

/// The agent's side: reads one command line from `stream`, runs it, answers.
pub fn serve_command(stream: &mut (impl Read + Write)) -> io::Result<()> {
    let mut line = Vec::new();
    let mut byte = [0u8];
    loop {
        if stream.read(&mut byte)? == 0 {
            return Ok(());
        }
        if byte[0] == b'\n' {
            break;
        }
        if line.len() >= COMMAND_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "command too long",
            ));
        }
        line.push(byte[0]);
    }
    let command = String::from_utf8_lossy(&line).into_owned();
    let output = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("exec 2>&1; {command}"))
        .stdin(std::process::Stdio::null())
        .output()?;
    let code = output.status.code().unwrap_or(-1);
    stream.write_all(format!("EXIT {code} {}\n", output.stdout.len()).as_bytes())?;
    stream.write_all(&output.stdout)?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn the_pattern_catches_a_lost_a_repeated_and_a_changed_byte() {
        let mut data = Vec::new();
        write_pattern(&mut data, 7, 100_000).unwrap();
        assert_eq!(read_pattern(&mut &data[..], 7, 100_000).unwrap(), None);
        let mut lost = data.clone();
        lost.remove(5000);
        lost.push(0);
        assert_eq!(
            read_pattern(&mut &lost[..], 7, 100_000).unwrap(),
            Some(5000)
        );
        let mut repeated = data.clone();
        repeated.insert(70_000, data[69_999]);
        repeated.pop();
        assert_eq!(
            read_pattern(&mut &repeated[..], 7, 100_000).unwrap(),
            Some(70_000)
        );
        let mut changed = data.clone();
        changed[99_999] ^= 1;
        assert_eq!(
            read_pattern(&mut &changed[..], 7, 100_000).unwrap(),
            Some(99_999)
        );
        assert_eq!(read_pattern(&mut &data[..], 8, 100_000).unwrap(), Some(0));
    }

    #[test]
    fn an_exchange_round_trips_and_reports_corruption() {
        let (mut host, mut guest) = UnixStream::pair().unwrap();
        let peer = std::thread::spawn(move || exchange_as_guest(&mut guest).unwrap());
        let report = exchange_as_host(&mut host, 3, 300_000).unwrap();
        assert!(report.ok(), "{report:?}");
        assert_eq!(peer.join().unwrap(), Some((3, 300_000, true)));
        drop(host);
    }

    #[test]
    fn the_agent_runs_a_command_and_returns_its_status_and_output() {
        let (client, mut agent) = UnixStream::pair().unwrap();
        let served = std::thread::spawn(move || serve_command(&mut agent));
        let output = run_command(client, "echo hello; echo oops >&2; exit 3").unwrap();
        served.join().unwrap().unwrap();
        assert_eq!(output.code, 3);
        assert_eq!(output.output, b"hello\noops\n");
    }
}
