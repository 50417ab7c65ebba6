// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {HostEarnings} from "./HostEarnings.sol";
import {MarketplaceEscrow} from "./MarketplaceEscrow.sol";
import {NodeRegistry} from "./NodeRegistry.sol";

/// @title JobMarketplace
/// @notice Open jobs and sessions, paid in ETH (token address(0)) or an ERC20 (DESIGN §3, §11).
///
///         Open job: post (escrow in) → claim (the host's registered price is recorded; it must
///         not exceed the client's maximum) → [unclaim: back to open] → submit result → release
///         after the dispute window (the client may release at once) → paid. The client may
///         cancel while open; anyone may expire it at the deadline while open or claimed.
///         Within the dispute window the client may challenge with the bond; the arbiter
///         resolves within the arbitration window: upheld → the client may withdraw the whole
///         escrow, its bond and the slashed share of the host's stake (the slashed ETH
///         compensates the wronged client rather than feeding the treasury, which would reward
///         the arbiter's side for upholding); rejected → the host is paid as on release and is
///         credited the bond in HostEarnings. If the arbiter stays silent for the whole
///         arbitration window, anyone may settle the job (settleUnresolved): the host is paid
///         as on release, the bond goes back to the client, nothing is slashed, so the escrow,
///         the bond and the host's stake are never stuck.
///
///         Session: a client opens one with a host and a deposit at the host's registered
///         price, which must not exceed the client's maximum (a host cannot raise its price
///         under a client's pending transaction); the host proves work in increments of tokens;
///         client or host completes it; anyone may time it out once no proof came for `timeout`
///         seconds. Sessions are never slashed, so they do not lock the host's stake: a host may
///         unregister with sessions open, and they still settle and pay it (to its last payout
///         address) as usual.
///
///         Time: work on a job is accepted while block.timestamp < deadline and it expires from
///         the deadline on; the dispute window is [submittedAt, submittedAt + disputeWindow):
///         a challenge inside it, a release by anyone but the client from its end on; the
///         arbitration window is [challengedAt, challengedAt + arbitrationWindow): a verdict
///         inside it, settleUnresolved from its end on. Likewise proofs while block.timestamp <
///         lastActivity + timeout, a time-out from then on.
///
///         Charge = tokens × price per million / 1e6, rounded down, capped by the escrow; fee =
///         charge × feeBps / 10000 rounded down. Refunds, fees, bonds and slashed stake are pull
///         payments (`claimable`, `withdraw`); host earnings go to HostEarnings.
///
///         Tokens: any ERC20 may be named; accounting is per token, so a bad token harms only
///         the jobs and sessions that use it. A host's prices are in its one registered price
///         token (NodeRegistry.priceTokenOf): a claim or a session in any other token is
///         refused (TokenNotPriced). A host's node should still check a session's timeout.
contract JobMarketplace is MarketplaceEscrow {
    enum JobStatus {
        None,
        Open,
        Claimed,
        Submitted,
        Challenged,
        Released,
        Refunded,
        Cancelled,
        Expired
    }

    enum SessionStatus {
        None,
        Active,
        Completed,
        TimedOut
    }

    struct Job {
        address client;
        uint64 deadline;
        JobStatus status;
        address token;
        uint64 claimedAt;
        address host;
        uint64 submittedAt;
        uint64 challengedAt;
        bytes32 modelId;
        bytes32 promptHash;
        uint256 escrow;
        uint256 maxTokens;
        uint256 maxPricePerMillion;
        uint256 pricePerMillion;
        uint256 tokensUsed;
        bytes32 outputHash;
        bytes32 receiptRoot;
    }

    struct Session {
        address client;
        uint64 createdAt;
        SessionStatus status;
        address host;
        uint64 lastActivity;
        address token;
        uint64 timeout;
        bytes32 modelId;
        uint256 deposit;
        uint256 pricePerMillion;
        uint256 proofInterval;
        uint256 tokensProven;
        bytes32 lastProofHash;
    }

    /// Seconds after a result during which the client may challenge it.
    uint256 public immutable disputeWindow;
    /// ETH a challenge must carry.
    uint256 public immutable challengeBond;
    /// Share of the host's stake, in basis points, slashed when a challenge is upheld.
    uint256 public immutable slashBps;
    /// Seconds after a challenge during which the arbiter may resolve it; from then on anyone
    /// may settle it unresolved.
    uint256 public immutable arbitrationWindow;

    uint256 public jobCount;
    uint256 public sessionCount;
    mapping(uint256 => Job) private _jobs;
    mapping(uint256 => Session) private _sessions;

    event JobPosted(
        uint256 indexed jobId,
        address indexed client,
        bytes32 indexed modelId,
        address token,
        uint256 escrow,
        uint256 maxTokens,
        uint256 maxPricePerMillion,
        uint64 deadline,
        bytes32 promptHash
    );
    event JobClaimed(uint256 indexed jobId, address indexed host, uint256 pricePerMillion);
    event JobUnclaimed(uint256 indexed jobId, address indexed host);
    event ResultSubmitted(
        uint256 indexed jobId,
        address indexed host,
        uint256 tokensUsed,
        bytes32 outputHash,
        bytes32 receiptRoot
    );
    event PaymentReleased(
        uint256 indexed jobId,
        address indexed host,
        address token,
        uint256 charge,
        uint256 fee,
        uint256 hostAmount,
        uint256 refund
    );
    event JobChallenged(uint256 indexed jobId, address indexed client, uint256 bond);
    event ChallengeResolved(uint256 indexed jobId, bool upheld, uint256 slashed);
    event ChallengeExpired(uint256 indexed jobId, address indexed client, uint256 bondReturned);
    event JobCancelled(uint256 indexed jobId, uint256 refund);
    event JobExpired(uint256 indexed jobId, uint256 refund);
    event SessionCreated(
        uint256 indexed sessionId,
        address indexed client,
        address indexed host,
        bytes32 modelId,
        address token,
        uint256 deposit,
        uint256 pricePerMillion,
        uint256 proofInterval,
        uint64 timeout
    );
    event ProofSubmitted(
        uint256 indexed sessionId,
        uint256 tokens,
        uint256 totalTokens,
        bytes32 proofHash
    );
    event SessionCompleted(
        uint256 indexed sessionId,
        address indexed by,
        uint256 tokens,
        uint256 charge,
        uint256 fee,
        uint256 hostAmount,
        uint256 refund
    );
    event SessionTimedOut(
        uint256 indexed sessionId,
        uint256 tokens,
        uint256 charge,
        uint256 fee,
        uint256 hostAmount,
        uint256 refund
    );

    error SlashTooHigh(uint256 slashBps);
    error ZeroArbitrationWindow();
    error ZeroEscrow();
    error ZeroMaxTokens();
    error ZeroMaxPrice();
    error DeadlineNotInFuture(uint64 deadline, uint256 now_);
    error UnknownJob(uint256 jobId);
    error WrongJobStatus(uint256 jobId, JobStatus status);
    error DeadlinePassed(uint256 jobId, uint64 deadline);
    error DeadlineNotReached(uint256 jobId, uint64 deadline);
    error PriceTooHigh(uint256 jobId, uint256 pricePerMillion, uint256 maxPricePerMillion);
    error HostPriceTooHigh(address host, uint256 pricePerMillion, uint256 maxPricePerMillion);
    error NotJobHost(uint256 jobId, address caller);
    error NotJobClient(uint256 jobId, address caller);
    error TooManyTokens(uint256 jobId, uint256 tokensUsed, uint256 maxTokens);
    error DisputeWindowOpen(uint256 jobId, uint256 endsAt);
    error DisputeWindowClosed(uint256 jobId, uint256 endedAt);
    error BondMismatch(uint256 sent, uint256 bond);
    error NotArbiter(address caller);
    error ArbitrationWindowOpen(uint256 jobId, uint256 endsAt);
    error ArbitrationWindowClosed(uint256 jobId, uint256 endedAt);
    error ZeroDeposit();
    error ZeroProofInterval();
    error ZeroTimeout();
    error ZeroTokens();
    error UnknownSession(uint256 sessionId);
    error WrongSessionStatus(uint256 sessionId, SessionStatus status);
    error NotSessionHost(uint256 sessionId, address caller);
    error NotSessionParty(uint256 sessionId, address caller);
    error DepositExceeded(uint256 sessionId, uint256 charge, uint256 deposit);
    error SessionTimeoutPassed(uint256 sessionId, uint256 timedOutAt);
    error SessionStillLive(uint256 sessionId, uint256 timesOutAt);

    constructor(
        NodeRegistry nodes,
        HostEarnings earnings,
        address treasury_,
        address arbiter_,
        uint256 feeBps_,
        uint256 disputeWindow_,
        uint256 challengeBond_,
        uint256 slashBps_,
        uint256 arbitrationWindow_
    ) MarketplaceEscrow(nodes, earnings, treasury_, arbiter_, feeBps_) {
        if (slashBps_ > BPS) revert SlashTooHigh(slashBps_);
        if (arbitrationWindow_ == 0) revert ZeroArbitrationWindow();
        disputeWindow = disputeWindow_;
        challengeBond = challengeBond_;
        slashBps = slashBps_;
        arbitrationWindow = arbitrationWindow_;
    }

    // ----------------------------------------------------------------------------- open jobs

    /// @notice Posts an open job with its escrow (ETH as msg.value, or an ERC20 approved first).
    function postJob(
        bytes32 modelId,
        bytes32 promptHash,
        uint256 maxTokens,
        uint256 maxPricePerMillion,
        uint64 deadline,
        address token,
        uint256 escrow
    ) external payable nonReentrant returns (uint256 jobId) {
        if (!modelRegistry.isApproved(modelId)) revert ModelNotApproved(modelId);
        if (escrow == 0) revert ZeroEscrow();
        if (maxTokens == 0) revert ZeroMaxTokens();
        if (maxPricePerMillion == 0) revert ZeroMaxPrice();
        if (deadline <= block.timestamp) revert DeadlineNotInFuture(deadline, block.timestamp);
        _checkValue(token, escrow);
        jobId = ++jobCount;
        Job storage job = _jobs[jobId];
        job.client = msg.sender;
        job.deadline = deadline;
        job.status = JobStatus.Open;
        job.token = token;
        job.modelId = modelId;
        job.promptHash = promptHash;
        job.escrow = escrow;
        job.maxTokens = maxTokens;
        job.maxPricePerMillion = maxPricePerMillion;
        _emitPosted(jobId, job);
        _pullEscrow(token, escrow);
    }

    /// @notice A registered host serving the model at no more than the client's maximum, with
    ///         its prices in the job's token, takes the job; its price is recorded. Its stake
    ///         stays locked until the job settles.
    function claimJob(uint256 jobId) external {
        Job storage job = _jobIn(jobId, JobStatus.Open);
        if (block.timestamp >= job.deadline) revert DeadlinePassed(jobId, job.deadline);
        uint256 price = _hostPrice(msg.sender, job.modelId, job.token);
        if (price > job.maxPricePerMillion) {
            revert PriceTooHigh(jobId, price, job.maxPricePerMillion);
        }
        job.status = JobStatus.Claimed;
        job.host = msg.sender;
        job.pricePerMillion = price;
        job.claimedAt = uint64(block.timestamp);
        emit JobClaimed(jobId, msg.sender, price);
        nodeRegistry.openWork(msg.sender);
    }

    /// @notice The claiming host gives the job back (the prompt never came); it is open again
    ///         and the escrow stays.
    function unclaimJob(uint256 jobId) external {
        Job storage job = _jobIn(jobId, JobStatus.Claimed);
        if (msg.sender != job.host) revert NotJobHost(jobId, msg.sender);
        job.status = JobStatus.Open;
        job.host = address(0);
        job.pricePerMillion = 0;
        job.claimedAt = 0;
        emit JobUnclaimed(jobId, msg.sender);
        nodeRegistry.closeWork(msg.sender);
    }

    /// @notice The claiming host reports the tokens used (prompt + completion) and the hashes
    ///         of the output and of the receipts; the dispute window starts now.
    function submitResult(
        uint256 jobId,
        uint256 tokensUsed,
        bytes32 outputHash,
        bytes32 receiptRoot
    ) external {
        Job storage job = _jobIn(jobId, JobStatus.Claimed);
        if (msg.sender != job.host) revert NotJobHost(jobId, msg.sender);
        if (block.timestamp >= job.deadline) revert DeadlinePassed(jobId, job.deadline);
        if (tokensUsed > job.maxTokens) revert TooManyTokens(jobId, tokensUsed, job.maxTokens);
        job.status = JobStatus.Submitted;
        job.submittedAt = uint64(block.timestamp);
        job.tokensUsed = tokensUsed;
        job.outputHash = outputHash;
        job.receiptRoot = receiptRoot;
        emit ResultSubmitted(jobId, msg.sender, tokensUsed, outputHash, receiptRoot);
    }

    /// @notice Pays a submitted job: anyone once the dispute window has ended, the client at
    ///         any time (it accepts the result early).
    function releasePayment(uint256 jobId) external nonReentrant {
        Job storage job = _jobIn(jobId, JobStatus.Submitted);
        if (msg.sender != job.client) {
            uint256 endsAt = _disputeEnd(job);
            if (block.timestamp < endsAt) revert DisputeWindowOpen(jobId, endsAt);
        }
        job.status = JobStatus.Released;
        _payHost(jobId, job);
        nodeRegistry.closeWork(job.host);
    }

    /// @notice The client disputes a result inside the dispute window, sending the bond.
    function challengeJob(uint256 jobId) external payable nonReentrant {
        Job storage job = _jobIn(jobId, JobStatus.Submitted);
        if (msg.sender != job.client) revert NotJobClient(jobId, msg.sender);
        uint256 endsAt = _disputeEnd(job);
        if (block.timestamp >= endsAt) revert DisputeWindowClosed(jobId, endsAt);
        if (msg.value != challengeBond) revert BondMismatch(msg.value, challengeBond);
        job.status = JobStatus.Challenged;
        job.challengedAt = uint64(block.timestamp);
        emit JobChallenged(jobId, msg.sender, msg.value);
    }

    /// @notice The arbiter's verdict, inside the arbitration window. Upheld: the client may
    ///         withdraw the escrow, the bond and slashBps of the host's stake (ETH). Rejected:
    ///         paid as on release, and the bond is credited to the host in HostEarnings.
    ///         From the window's end on the verdict is refused, so the arbiter cannot race
    ///         settleUnresolved (nor be raced by it).
    function resolveChallenge(uint256 jobId, bool upheld) external nonReentrant {
        if (msg.sender != arbiter) revert NotArbiter(msg.sender);
        Job storage job = _jobIn(jobId, JobStatus.Challenged);
        uint256 endsAt = _arbitrationEnd(job);
        if (block.timestamp >= endsAt) revert ArbitrationWindowClosed(jobId, endsAt);
        address host = job.host;
        if (upheld) {
            uint256 slashed = (nodeRegistry.stakeOf(host) * slashBps) / BPS;
            job.status = JobStatus.Refunded;
            claimable[job.client][job.token] += job.escrow;
            claimable[job.client][ETH] += challengeBond + slashed;
            emit ChallengeResolved(jobId, true, slashed);
            if (slashed != 0) nodeRegistry.slash(host, slashed);
        } else {
            job.status = JobStatus.Released;
            emit ChallengeResolved(jobId, false, 0);
            _payHost(jobId, job);
            _creditHost(host, ETH, challengeBond);
        }
        nodeRegistry.closeWork(host);
    }

    /// @notice Anyone settles a challenge the arbiter left unresolved for the whole
    ///         arbitration window. The job settles as if the challenge were rejected (the host
    ///         is paid as on release, the refund and fee are booked as usual) EXCEPT the bond:
    ///         it becomes claimable by the client again, and nothing is slashed. The arbiter's
    ///         silence punishes nobody: not the host's stake, not the client's bond. The host's
    ///         stake is unlocked (its open work closes), so it may unregister.
    function settleUnresolved(uint256 jobId) external nonReentrant {
        Job storage job = _jobIn(jobId, JobStatus.Challenged);
        uint256 endsAt = _arbitrationEnd(job);
        if (block.timestamp < endsAt) revert ArbitrationWindowOpen(jobId, endsAt);
        job.status = JobStatus.Released;
        claimable[job.client][ETH] += challengeBond;
        emit ChallengeExpired(jobId, job.client, challengeBond);
        _payHost(jobId, job);
        nodeRegistry.closeWork(job.host);
    }

    /// @notice The client withdraws an unclaimed job; its escrow becomes claimable.
    function cancelJob(uint256 jobId) external nonReentrant {
        Job storage job = _jobIn(jobId, JobStatus.Open);
        if (msg.sender != job.client) revert NotJobClient(jobId, msg.sender);
        job.status = JobStatus.Cancelled;
        claimable[msg.sender][job.token] += job.escrow;
        emit JobCancelled(jobId, job.escrow);
    }

    /// @notice Anyone ends a job that was not delivered by its deadline (open, or claimed and
    ///         not submitted); the escrow becomes claimable by the client.
    function expireJob(uint256 jobId) external nonReentrant {
        Job storage job = _job(jobId);
        JobStatus status = job.status;
        if (status != JobStatus.Open && status != JobStatus.Claimed) {
            revert WrongJobStatus(jobId, status);
        }
        if (block.timestamp < job.deadline) revert DeadlineNotReached(jobId, job.deadline);
        job.status = JobStatus.Expired;
        claimable[job.client][job.token] += job.escrow;
        emit JobExpired(jobId, job.escrow);
        if (status == JobStatus.Claimed) nodeRegistry.closeWork(job.host);
    }

    function getJob(uint256 jobId) external view returns (Job memory) {
        return _jobs[jobId];
    }

    /// @notice When the dispute window of a submitted job ends (0 before a result).
    function disputeEndsAt(uint256 jobId) external view returns (uint256) {
        Job storage job = _jobs[jobId];
        return job.submittedAt == 0 ? 0 : _disputeEnd(job);
    }

    /// @notice When the arbitration window of a challenged job ends (0 before a challenge).
    function arbitrationEndsAt(uint256 jobId) external view returns (uint256) {
        Job storage job = _jobs[jobId];
        return job.challengedAt == 0 ? 0 : _arbitrationEnd(job);
    }

    // ------------------------------------------------------------------------------ sessions

    /// @notice Opens a session with `host` at its registered price for `modelId`, with a
    ///         deposit (ETH as msg.value, or an ERC20 approved first). The price must not
    ///         exceed `maxPricePerMillion` (the price the client saw), and `token` must be the
    ///         host's price token. `proofInterval` is how many tokens the host serves between
    ///         proofs (the node's rule, recorded here). The session does not lock the host's
    ///         stake (sessions are never slashed).
    function createSession(
        address host,
        bytes32 modelId,
        address token,
        uint256 deposit,
        uint256 maxPricePerMillion,
        uint256 proofInterval,
        uint64 timeout
    ) external payable nonReentrant returns (uint256 sessionId) {
        if (deposit == 0) revert ZeroDeposit();
        if (maxPricePerMillion == 0) revert ZeroMaxPrice();
        if (proofInterval == 0) revert ZeroProofInterval();
        if (timeout == 0) revert ZeroTimeout();
        uint256 price = _hostPrice(host, modelId, token);
        if (price > maxPricePerMillion) {
            revert HostPriceTooHigh(host, price, maxPricePerMillion);
        }
        _checkValue(token, deposit);
        sessionId = ++sessionCount;
        Session storage s = _sessions[sessionId];
        s.client = msg.sender;
        s.createdAt = uint64(block.timestamp);
        s.status = SessionStatus.Active;
        s.host = host;
        s.lastActivity = uint64(block.timestamp);
        s.token = token;
        s.timeout = timeout;
        s.modelId = modelId;
        s.deposit = deposit;
        s.pricePerMillion = price;
        s.proofInterval = proofInterval;
        emit SessionCreated(
            sessionId,
            msg.sender,
            host,
            modelId,
            token,
            deposit,
            price,
            proofInterval,
            timeout
        );
        _pullEscrow(token, deposit);
    }

    /// @notice The host adds `tokens` served since its last proof; refused when the total
    ///         charge would exceed the deposit, or once the session has timed out.
    function submitProofOfWork(uint256 sessionId, uint256 tokens, bytes32 proofHash) external {
        Session storage s = _activeSession(sessionId);
        if (msg.sender != s.host) revert NotSessionHost(sessionId, msg.sender);
        uint256 timesOutAt = _sessionEnd(s);
        if (block.timestamp >= timesOutAt) revert SessionTimeoutPassed(sessionId, timesOutAt);
        if (tokens == 0) revert ZeroTokens();
        uint256 total = s.tokensProven + tokens;
        uint256 charge = (total * s.pricePerMillion) / PRICE_UNIT_TOKENS;
        if (charge > s.deposit) revert DepositExceeded(sessionId, charge, s.deposit);
        s.tokensProven = total;
        s.lastActivity = uint64(block.timestamp);
        s.lastProofHash = proofHash;
        emit ProofSubmitted(sessionId, tokens, total, proofHash);
    }

    /// @notice Client or host ends the session: what was proven is paid, the rest refunded.
    ///         A host that has unregistered meanwhile is still paid (HostEarnings sends it to
    ///         its last payout address).
    function completeSession(uint256 sessionId) external nonReentrant {
        Session storage s = _activeSession(sessionId);
        if (msg.sender != s.client && msg.sender != s.host) {
            revert NotSessionParty(sessionId, msg.sender);
        }
        s.status = SessionStatus.Completed;
        (uint256 charge, uint256 fee, uint256 hostAmount, uint256 refund) = _settleSession(s);
        emit SessionCompleted(sessionId, msg.sender, s.tokensProven, charge, fee, hostAmount, refund);
        _creditHost(s.host, s.token, hostAmount);
    }

    /// @notice Anyone ends a session that saw no proof for `timeout` seconds; settled as on
    ///         completion.
    function timeoutSession(uint256 sessionId) external nonReentrant {
        Session storage s = _activeSession(sessionId);
        uint256 timesOutAt = _sessionEnd(s);
        if (block.timestamp < timesOutAt) revert SessionStillLive(sessionId, timesOutAt);
        s.status = SessionStatus.TimedOut;
        (uint256 charge, uint256 fee, uint256 hostAmount, uint256 refund) = _settleSession(s);
        emit SessionTimedOut(sessionId, s.tokensProven, charge, fee, hostAmount, refund);
        _creditHost(s.host, s.token, hostAmount);
    }

    function getSession(uint256 sessionId) external view returns (Session memory) {
        return _sessions[sessionId];
    }

    // ------------------------------------------------------------------------------ internals

    function _job(uint256 jobId) private view returns (Job storage job) {
        job = _jobs[jobId];
        if (job.status == JobStatus.None) revert UnknownJob(jobId);
    }

    function _jobIn(uint256 jobId, JobStatus wanted) private view returns (Job storage job) {
        job = _job(jobId);
        if (job.status != wanted) revert WrongJobStatus(jobId, job.status);
    }

    /// @dev Reads the new job back from storage: the parameters alone overflow the stack.
    function _emitPosted(uint256 jobId, Job storage job) private {
        emit JobPosted(
            jobId,
            job.client,
            job.modelId,
            job.token,
            job.escrow,
            job.maxTokens,
            job.maxPricePerMillion,
            job.deadline,
            job.promptHash
        );
    }

    function _disputeEnd(Job storage job) private view returns (uint256) {
        return uint256(job.submittedAt) + disputeWindow;
    }

    function _arbitrationEnd(Job storage job) private view returns (uint256) {
        return uint256(job.challengedAt) + arbitrationWindow;
    }

    function _payHost(uint256 jobId, Job storage job) private {
        uint256 charge = _charge(job.tokensUsed, job.pricePerMillion, job.escrow);
        (uint256 fee, uint256 hostAmount, uint256 refund) = _split(
            job.client,
            job.token,
            job.escrow,
            charge
        );
        emit PaymentReleased(jobId, job.host, job.token, charge, fee, hostAmount, refund);
        _creditHost(job.host, job.token, hostAmount);
    }

    function _activeSession(uint256 sessionId) private view returns (Session storage s) {
        s = _sessions[sessionId];
        if (s.status == SessionStatus.None) revert UnknownSession(sessionId);
        if (s.status != SessionStatus.Active) revert WrongSessionStatus(sessionId, s.status);
    }

    function _sessionEnd(Session storage s) private view returns (uint256) {
        return uint256(s.lastActivity) + s.timeout;
    }

    function _settleSession(
        Session storage s
    ) private returns (uint256 charge, uint256 fee, uint256 hostAmount, uint256 refund) {
        charge = _charge(s.tokensProven, s.pricePerMillion, s.deposit);
        (fee, hostAmount, refund) = _split(s.client, s.token, s.deposit, charge);
    }
}
