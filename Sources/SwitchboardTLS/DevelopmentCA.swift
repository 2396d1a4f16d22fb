// `switchboard cert init`: a development CA and a server certificate signed by it, written as PEM
// files into one folder (DATA/tls by convention).
// Invariants: the folder is 0700, private keys 0600, certificates 0644; each file appears
// complete or not at all (written to a temporary name, fsynced, then linked or renamed into
// place); without `force` nothing existing is ever replaced, even if another process creates a
// file while we run (link(2) fails with EEXIST instead of overwriting).
import COpenSSL
import Glibc

public enum DevelopmentCA {
    /// The paths and facts `cert init` reports.
    public struct Files: Sendable, Equatable {
        public let directory: String
        public let caCertificate: String
        public let caPrivateKey: String
        public let serverCertificate: String
        public let serverPrivateKey: String
        public let serverNames: [String]
        /// SHA-256 of the server certificate's public key, the value pinning clients record.
        public let serverPublicKeyFingerprint: String
        public let serverNotAfter: Int64
    }

    public static let defaultServerNames = ["localhost", "127.0.0.1", "::1"]
    public static let caValidDays = 3650
    /// 825 days: the longest lifetime Apple's TLS clients accept even from a private CA.
    public static let serverValidDays = 825

    /// The folder under a server data directory.
    public static func directory(forDataDirectory data: String) -> String { joinPath(data, "tls") }

    public static func paths(in directory: String) -> (caCertificate: String, caPrivateKey: String,
                                                       serverCertificate: String, serverPrivateKey: String) {
        (joinPath(directory, "ca.pem"), joinPath(directory, "ca.key"),
         joinPath(directory, "server.pem"), joinPath(directory, "server.key"))
    }

    /// True when the server certificate and key are both present (what `make run` checks).
    public static func serverCredentialsExist(in directory: String) -> Bool {
        let p = paths(in: directory)
        return access(p.serverCertificate, F_OK) == 0 && access(p.serverPrivateKey, F_OK) == 0
    }

    /// Creates the CA and a server certificate for `defaultServerNames` + `extraNames`.
    /// Throws `.fileExists` (listing the files) when any target exists and `force` is false.
    public static func create(in directory: String, extraNames: [String] = [], force: Bool = false,
                              now: Int64 = Int64(time(nil))) throws(TLSError) -> Files {
        let p = paths(in: directory)
        let targets = [p.caCertificate, p.caPrivateKey, p.serverCertificate, p.serverPrivateKey]
        if !force {
            let existing = targets.filter { access($0, F_OK) == 0 }
            if !existing.isEmpty {
                throw TLSError(.fileExists, "refusing to overwrite \(existing.joined(separator: ", ")) (use --force to replace them)")
            }
        }
        var names = defaultServerNames
        for name in extraNames where !names.contains(name) { names.append(name) }

        let authority = try CertificateAuthority.generate(now: now)
        let request = CertificateRequest.server(names: names, validDays: serverValidDays, now: now)
        let server = try authority.issue(request)

        try makeDirectories(directory, mode: 0o700)
        // Keys first: a crash part-way leaves no certificate whose key is missing.
        try writeFile(p.caPrivateKey, contents: try authority.privateKeyPEM, mode: 0o600, replace: force)
        try writeFile(p.caCertificate, contents: try authority.certificatePEM, mode: 0o644, replace: force)
        try writeFile(p.serverPrivateKey, contents: server.privateKeyPEM, mode: 0o600, replace: force)
        try writeFile(p.serverCertificate, contents: server.certificatePEM, mode: 0o644, replace: force)
        return Files(directory: directory, caCertificate: p.caCertificate, caPrivateKey: p.caPrivateKey,
                     serverCertificate: p.serverCertificate, serverPrivateKey: p.serverPrivateKey,
                     serverNames: request.dnsNames + request.ipAddresses,
                     serverPublicKeyFingerprint: server.publicKeyFingerprint, serverNotAfter: request.notAfter)
    }
}

// MARK: files

func joinPath(_ directory: String, _ name: String) -> String {
    directory.hasSuffix("/") ? directory + name : directory + "/" + name
}

/// mkdir -p; the last component gets `mode` and is tightened to it if it already exists looser
/// (it is about to hold private keys). Parents are created 0700 too: they are ours.
func makeDirectories(_ path: String, mode: mode_t) throws(TLSError) {
    var prefix = path.hasPrefix("/") ? "/" : ""
    for component in path.split(separator: "/") {
        prefix += component
        if mkdir(prefix, mode) != 0 && errno != EEXIST {
            throw TLSError.syscall(.fileSystem, "cannot create the folder \(prefix)", errno: errno)
        }
        prefix += "/"
    }
    var info = stat()
    guard stat(path, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR else {
        throw TLSError(.fileSystem, "\(path) is not a folder")
    }
    if info.st_mode & 0o777 & ~mode != 0, chmod(path, mode) != 0 {
        throw TLSError.syscall(.fileSystem, "cannot restrict \(path) to mode \(String(mode, radix: 8))", errno: errno)
    }
}

/// Writes `contents` with exactly `mode` (no umask surprises), durably, then moves it into place:
/// rename(2) when replacing, link(2) otherwise so an existing file is never clobbered.
func writeFile(_ path: String, contents: String, mode: mode_t, replace: Bool) throws(TLSError) {
    let temporary = path + ".tmp-\(getpid())"
    let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)
    guard fd >= 0 else { throw TLSError.syscall(.fileSystem, "cannot create \(temporary)", errno: errno) }
    var failure: TLSError?
    if fchmod(fd, mode) != 0 {
        failure = TLSError.syscall(.fileSystem, "cannot set the mode of \(temporary)", errno: errno)
    }
    var bytes = Array(contents.utf8)
    var offset = 0
    while failure == nil && offset < bytes.count {
        let written = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + offset, $0.count - offset) }
        if written < 0 {
            if errno == EINTR { continue }
            failure = TLSError.syscall(.fileSystem, "cannot write \(temporary)", errno: errno)
        } else {
            offset += written
        }
    }
    if failure == nil && fsync(fd) != 0 {
        failure = TLSError.syscall(.fileSystem, "cannot flush \(temporary)", errno: errno)
    }
    Glibc.close(fd)
    // Key material should not linger in this process longer than needed.
    OPENSSL_cleanse(&bytes, bytes.count)
    if failure == nil {
        if replace {
            if rename(temporary, path) != 0 { failure = TLSError.syscall(.fileSystem, "cannot move \(temporary) to \(path)", errno: errno) }
        } else if link(temporary, path) != 0 {
            failure = errno == EEXIST
                ? TLSError(.fileExists, "refusing to overwrite \(path) (use --force to replace it)")
                : TLSError.syscall(.fileSystem, "cannot create \(path)", errno: errno)
        }
    }
    unlink(temporary)
    if let failure { throw failure }
}
