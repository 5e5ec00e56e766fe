// SPDX-License-Identifier: UNLICENSED
pragma solidity 0.8.30;

/// Minimal ERC-20 surface the exchange uses.
interface IERC20Like {
    function transferFrom(address from, address to, uint256 amount) external returns (bool);
    function transfer(address to, uint256 amount) external returns (bool);
    function balanceOf(address who) external view returns (uint256);
}

/// @title Perpetual-futures exchange settled by a quorum of relayers.
/// @notice Units, encodings and formulas: docs/units.md. Protocol: docs/DESIGN.md ("Quorum protocol").
/// The contract is the judge: it re-checks every order signature, fill amount, margin requirement and the relayers'
/// quorum signatures. A fill that fails a per-fill check is skipped with a reason code; the batch still takes its seq.
contract Exchange {
    // ------------------------------------------------------------------------------------------------ constants
    uint256 internal constant SIZE_ONE = 1e8;
    uint256 internal constant PPM = 1e6;
    uint256 internal constant MAX_MARKETS = 64;
    uint256 internal constant HALF_N = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0;
    uint256 internal constant CANCELLED_BIT = 1 << 255;
    uint256 internal constant MAX_PRICE_BOUND = 1 << 62;
    uint256 internal constant MAX_SIZE_BOUND = 1 << 62;
    uint256 internal constant MAX_FEE = 100_000;
    uint256 internal constant MAX_DEPOSIT = 1 << 96;
    uint32 internal constant NO_MARKET = type(uint32).max;

    uint8 internal constant FLAG_POST_ONLY = 1;
    uint8 internal constant FLAG_REDUCE_ONLY = 2;
    uint8 internal constant FLAG_IOC = 4;
    uint8 internal constant FLAG_FOK = 8;
    uint8 internal constant KNOWN_FLAGS = 15;

    uint8 internal constant TRIGGER_NONE = 0;
    uint8 internal constant TRIGGER_STOP_LOSS = 1;
    uint8 internal constant TRIGGER_TAKE_PROFIT = 2;

    // Reasons a fill is skipped (FillSkipped.reason). Stable: the relayers map them to names.
    uint8 public constant SKIP_BAD_SIGNATURE = 1;
    uint8 public constant SKIP_SELF_TRADE = 2;
    uint8 public constant SKIP_MARKET_MISMATCH = 3;
    uint8 public constant SKIP_EXPIRED = 4;
    uint8 public constant SKIP_CANCELLED = 5;
    uint8 public constant SKIP_NO_CROSS = 6;
    uint8 public constant SKIP_WRONG_MAKER = 7;
    uint8 public constant SKIP_POST_ONLY_TAKER = 8;
    uint8 public constant SKIP_TRIGGER = 9;
    uint8 public constant SKIP_BOUNDS = 10;
    uint8 public constant SKIP_OVERFILL = 11;
    uint8 public constant SKIP_FOK = 12;
    uint8 public constant SKIP_REDUCE_ONLY = 13;
    uint8 public constant SKIP_MARGIN_MAKER = 14;
    uint8 public constant SKIP_MARGIN_TAKER = 15;
    uint8 public constant SKIP_POSITION_LIMIT = 16;

    bytes32 internal constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    bytes32 internal constant ORDER_TYPEHASH = keccak256(
        "Order(address trader,uint32 market,uint8 side,uint64 price,uint64 amount,uint64 salt,uint32 createdAt,"
        "uint32 expiry,uint8 flags,uint8 triggerKind,uint64 triggerPrice)"
    );
    bytes32 internal constant FILL_TYPEHASH = keccak256("Fill(uint16 maker,uint16 taker,uint64 amount)");
    bytes32 internal constant BATCH_TYPEHASH = keccak256(
        "Batch(uint64 seq,uint32 round,bytes32 prevBatchHash,uint64 setVersion,uint32 deadline,bytes32[] orders,"
        "Fill[] fills)Fill(uint16 maker,uint16 taker,uint64 amount)"
    );
    bytes32 internal constant NAME_HASH = keccak256("PerpRelayerExchange");
    bytes32 internal constant VERSION_HASH = keccak256("1");

    // ------------------------------------------------------------------------------------------------ types
    struct Order {
        address trader;
        uint32 market;
        uint8 side; // 0 buy, 1 sell
        uint64 price;
        uint64 amount;
        uint64 salt;
        uint32 createdAt;
        uint32 expiry;
        uint8 flags;
        uint8 triggerKind;
        uint64 triggerPrice;
    }

    struct Signature {
        bytes32 r;
        bytes32 s;
        uint8 v;
    }

    struct SignedOrder {
        Order order;
        Signature sig;
    }

    struct Fill {
        uint16 maker;
        uint16 taker;
        uint64 amount;
    }

    struct Batch {
        uint64 seq;
        uint32 round;
        bytes32 prevBatchHash;
        uint64 setVersion;
        uint32 deadline;
        SignedOrder[] orders;
        Fill[] fills;
    }

    struct MarketParams {
        uint32 imr;
        uint32 mmr;
        uint32 makerFee;
        uint32 takerFee;
        uint32 liqPenalty;
        uint64 tick;
        uint64 minSize;
        uint64 maxOrderSize;
        uint64 maxPosition;
        uint64 maxPrice;
        uint64 maxFundingDelta;
    }

    struct Market {
        bool exists;
        uint64 oraclePrice;
        int64 fundingIndex;
        MarketParams params;
    }

    /// One storage slot: size (int64) | cost (int128) | fundingIndex (int64).
    struct Position {
        int64 size;
        int128 cost;
        int64 fundingIndex;
    }

    /// One storage slot: balance (int128, collateral atoms x SIZE_ONE: an exact quote balance, docs/units.md)
    /// | mask of markets with an open position (uint64) | cancelUpTo salt (uint64). Everything a fill reads of an
    /// account is in this one slot.
    struct Account {
        int128 balance;
        uint64 openMask;
        uint64 cancelledUpTo;
    }

    /// A market as read once per batch (and reused while consecutive fills stay in it).
    struct MarketCache {
        uint256 fees; // settleBatch: fees of the fills applied so far, added to feesCollected at the end
        uint32 id;
        bool ok;
        uint64 oraclePrice;
        int64 fundingIndex;
        MarketParams params;
    }

    /// In-memory working state of one side of a fill: the account (balance with funding settled, openMask,
    /// cancelledUpTo) and the position in the fill's market (size, cost, fundingIndex), flat so that one Side can be
    /// reused for every fill of a batch.
    struct Side {
        address trader;
        int256 balance;
        uint64 openMask;
        uint64 cancelledUpTo;
        int256 size;
        int256 cost;
        int256 fundingIndex;
        int256 fundingOwed;
        bool shrankOnly;
        uint256 accountSlot; // storage slots of accounts[trader] and positions[trader][market]
        uint256 positionSlot;
    }

    /// What settleBatch reuses for every fill: copies of the two orders, the two sides, OrderFilled's data.
    struct FillScratch {
        Order maker;
        Order taker;
        Side ms;
        Side ts;
        uint256 eventData;
        uint256 makerIndex; // 1 + the index of the order in `maker` (0: none yet)
    }

    // ------------------------------------------------------------------------------------------------ storage
    IERC20Like public immutable token;
    uint256 internal immutable cachedChainId;
    bytes32 internal immutable cachedDomainSeparator;

    address public owner;
    address public oracle;

    mapping(uint256 => Market) internal markets;
    mapping(address => Account) internal accounts;
    mapping(address => mapping(uint256 => Position)) internal positions;
    /// (trader, salt) -> filled amount (low 64 bits) | CANCELLED_BIT
    mapping(address => mapping(uint64 => uint256)) internal orderState;

    uint64 public lastSeq;
    bytes32 public lastBatchHash;

    uint64 public setVersion;
    /// The set version batch lastSeq+1 is checked against: the one in force when batch lastSeq landed.
    uint64 public activeSetVersion;
    address[] internal members;
    mapping(uint64 => mapping(address => bool)) internal inSet;
    mapping(uint64 => uint16) public thresholdOf;
    mapping(uint64 => uint16) public setSizeOf;

    int256 public feesCollected;
    int256 public insuranceFund;
    int256 public fundingPool;
    int256 public badDebt;

    // ------------------------------------------------------------------------------------------------ events
    event RelayersUpdated(uint64 indexed version, address[] members, uint16 threshold);
    event OwnerChanged(address indexed owner);
    event OracleChanged(address indexed oracle);
    event MarketCreated(uint32 indexed market, MarketParams params);
    event MarketUpdated(uint32 indexed market, MarketParams params);
    event OraclePrice(uint32 indexed market, uint64 price);
    event FundingUpdated(uint32 indexed market, int64 delta, int64 index);
    event Deposited(address indexed trader, uint256 amount, int256 balance);
    event Withdrawn(address indexed trader, uint256 amount, int256 balance);
    event OrderCancelled(address indexed trader, uint64 salt);
    event CancelledUpTo(address indexed trader, uint64 salt);
    /// A settled fill: both orders' new fill counters, the fees, and both traders' new balance and position size in
    /// the market (position cost and funding index follow from docs/units.md; AccountUpdated carries them where a
    /// fill is not the cause).
    event OrderFilled(
        uint64 indexed seq,
        address indexed maker,
        address indexed taker,
        uint256 fillIndex,
        bytes32 makerHash,
        bytes32 takerHash,
        uint64 makerSalt,
        uint64 takerSalt,
        uint32 market,
        uint8 takerSide,
        uint64 price,
        uint64 amount,
        uint64 makerFilled,
        uint64 takerFilled,
        uint256 makerFee,
        uint256 takerFee,
        int256 makerBalance,
        int256 takerBalance,
        int64 makerSize,
        int64 takerSize
    );
    event FillSkipped(uint64 indexed seq, uint256 fillIndex, bytes32 makerHash, bytes32 takerHash, uint8 reason);
    /// The full new state of a trader's position in one market and of its (scaled) balance.
    event AccountUpdated(
        address indexed trader, uint32 indexed market, int64 size, int128 cost, int64 fundingIndex, int256 balance
    );
    event BatchSettled(
        uint64 indexed seq,
        bytes32 batchHash,
        uint32 round,
        uint64 setVersion,
        uint256 filled,
        uint256 skipped,
        address submitter
    );
    event Liquidated(
        address indexed trader,
        address indexed liquidator,
        uint32 indexed market,
        uint64 amount,
        uint64 price,
        uint256 penalty,
        int256 badDebt
    );
    event FeesWithdrawn(address indexed to, uint256 amount);

    // ------------------------------------------------------------------------------------------------ errors
    error NotOwner();
    error NotOracle();
    error NotTrader();
    error ZeroAddress();
    error InvalidRelayerSet(uint8 reason);
    error UnknownMarket(uint32 market);
    error MarketExists(uint32 market);
    error BadMarketParams(uint8 reason);
    error BadPrice();
    error FundingDeltaTooLarge(int64 delta, uint64 max);
    error ZeroAmount();
    error TransferFailed();
    error InsufficientCollateral(int256 available, uint256 amount);
    error AmountTooLarge(uint256 amount);
    error InsufficientMargin(int256 equity, uint256 requirement);
    error AccountHealthy(int256 equity, uint256 maintenance);
    error SaltNotIncreasing(uint64 current, uint64 requested);
    error BadSeq(uint64 expected, uint64 got);
    error BadPrevBatchHash(bytes32 expected, bytes32 got);
    error DeadlinePassed(uint32 deadline, uint256 timestamp);
    error WrongSetVersion(uint64 expected, uint64 got);
    error NotEnoughSignatures(uint256 have, uint256 need);
    error BadQuorumSignature(uint256 index);
    error SignersNotAscending(uint256 index);
    error SignerNotInSet(address signer);
    error TooManyOrders(uint256 count);
    error FillIndexOutOfRange(uint256 fillIndex);
    error BadLiquidation(uint8 reason);

    modifier onlyOwner() {
        if (msg.sender != owner) revert NotOwner();
        _;
    }

    modifier onlyOracle() {
        if (msg.sender != oracle) revert NotOracle();
        _;
    }

    constructor(IERC20Like token_, address owner_, address oracle_, address[] memory relayers, uint16 threshold) {
        if (address(token_) == address(0) || owner_ == address(0) || oracle_ == address(0)) revert ZeroAddress();
        token = token_;
        owner = owner_;
        oracle = oracle_;
        cachedChainId = block.chainid;
        cachedDomainSeparator = _buildDomainSeparator();
        _setRelayers(relayers, new address[](0), threshold);
        activeSetVersion = setVersion;
    }

    // ------------------------------------------------------------------------------------------------ admin
    function transferOwnership(address newOwner) external onlyOwner {
        if (newOwner == address(0)) revert ZeroAddress();
        owner = newOwner;
        emit OwnerChanged(newOwner);
    }

    function setOracle(address newOracle) external onlyOwner {
        if (newOracle == address(0)) revert ZeroAddress();
        oracle = newOracle;
        emit OracleChanged(newOracle);
    }

    /// Atomically change the relayer set: a new version. It applies from the batch after the next one.
    function setRelayers(address[] calldata adds, address[] calldata removes, uint16 threshold) external onlyOwner {
        _setRelayers(adds, removes, threshold);
    }

    function _setRelayers(address[] memory adds, address[] memory removes, uint16 threshold) internal {
        uint64 old = setVersion;
        uint64 version = old + 1;
        address[] memory current = members;
        // Removes must be members, each at most once.
        for (uint256 i = 0; i < removes.length; i++) {
            if (!inSet[old][removes[i]] || old == 0) revert InvalidRelayerSet(1);
            for (uint256 j = 0; j < i; j++) {
                if (removes[j] == removes[i]) revert InvalidRelayerSet(2);
            }
        }
        delete members;
        for (uint256 i = 0; i < current.length; i++) {
            address m = current[i];
            bool removed = false;
            for (uint256 j = 0; j < removes.length; j++) {
                if (removes[j] == m) {
                    removed = true;
                    break;
                }
            }
            if (!removed) {
                members.push(m);
                inSet[version][m] = true;
            }
        }
        for (uint256 i = 0; i < adds.length; i++) {
            address a = adds[i];
            if (a == address(0)) revert InvalidRelayerSet(3);
            if (inSet[version][a]) revert InvalidRelayerSet(4); // already a member, or added twice
            members.push(a);
            inSet[version][a] = true;
        }
        uint256 n = members.length;
        if (n == 0) revert InvalidRelayerSet(5);
        if (n > type(uint16).max) revert InvalidRelayerSet(6);
        if (uint256(threshold) * 2 <= n || threshold > n) revert InvalidRelayerSet(7); // strict majority, <= n
        setVersion = version;
        thresholdOf[version] = threshold;
        setSizeOf[version] = uint16(n);
        emit RelayersUpdated(version, members, threshold);
    }

    function createMarket(uint32 id, MarketParams calldata params) external onlyOwner {
        if (id >= MAX_MARKETS) revert BadMarketParams(0);
        if (markets[id].exists) revert MarketExists(id);
        _checkParams(params);
        Market storage m = markets[id];
        m.exists = true;
        m.params = params;
        emit MarketCreated(id, params);
    }

    function updateMarket(uint32 id, MarketParams calldata params) external onlyOwner {
        if (!markets[id].exists) revert UnknownMarket(id);
        _checkParams(params);
        markets[id].params = params;
        emit MarketUpdated(id, params);
    }

    function _checkParams(MarketParams calldata p) internal pure {
        if (p.mmr == 0 || p.mmr > p.imr || p.imr > PPM) revert BadMarketParams(1);
        if (p.makerFee > MAX_FEE || p.takerFee > MAX_FEE || p.liqPenalty > MAX_FEE) revert BadMarketParams(2);
        if (p.tick == 0 || p.maxPrice == 0 || p.maxPrice > MAX_PRICE_BOUND || p.maxPrice % p.tick != 0) {
            revert BadMarketParams(3);
        }
        if (p.minSize == 0 || p.maxOrderSize < p.minSize || p.maxOrderSize > MAX_SIZE_BOUND) revert BadMarketParams(4);
        if (p.maxPosition == 0 || p.maxPosition > MAX_SIZE_BOUND) revert BadMarketParams(5);
    }

    function setOraclePrice(uint32 market, uint64 price) external onlyOracle {
        Market storage m = markets[market];
        if (!m.exists) revert UnknownMarket(market);
        if (price == 0 || price > m.params.maxPrice) revert BadPrice();
        m.oraclePrice = price;
        emit OraclePrice(market, price);
    }

    /// Advance the cumulative funding index (+ = longs pay shorts), bounded per update.
    function updateFunding(uint32 market, int64 delta) external onlyOracle {
        Market storage m = markets[market];
        if (!m.exists) revert UnknownMarket(market);
        uint64 max = m.params.maxFundingDelta;
        if (_abs(int256(delta)) > max) revert FundingDeltaTooLarge(delta, max);
        m.fundingIndex += delta;
        emit FundingUpdated(market, delta, m.fundingIndex);
    }

    function withdrawFees(address to, uint256 amount) external onlyOwner {
        if (to == address(0)) revert ZeroAddress();
        if (amount > MAX_DEPOSIT || int256(amount) > feesCollected) revert InsufficientCollateral(feesCollected, amount);
        feesCollected -= int256(amount);
        if (!token.transfer(to, amount)) revert TransferFailed();
        emit FeesWithdrawn(to, amount);
    }

    /// Anyone may top up the insurance fund.
    function fundInsurance(uint256 amount) external {
        if (amount == 0) revert ZeroAmount();
        if (amount > MAX_DEPOSIT) revert AmountTooLarge(amount);
        if (!token.transferFrom(msg.sender, address(this), amount)) revert TransferFailed();
        insuranceFund += int256(amount);
    }

    // ------------------------------------------------------------------------------------------------ traders
    function deposit(uint256 amount) external {
        if (amount == 0) revert ZeroAmount();
        if (amount > MAX_DEPOSIT) revert AmountTooLarge(amount);
        if (!token.transferFrom(msg.sender, address(this), amount)) revert TransferFailed();
        Account storage a = accounts[msg.sender];
        int256 balance = int256(a.balance) + int256(amount * SIZE_ONE);
        if (balance > type(int128).max) revert AmountTooLarge(amount);
        a.balance = int128(balance);
        emit Deposited(msg.sender, amount, a.balance);
    }

    /// Withdraw only while the account stays above initial margin afterwards.
    function withdraw(uint256 amount) external {
        if (amount == 0) revert ZeroAmount();
        if (amount > MAX_DEPOSIT) revert AmountTooLarge(amount);
        Account storage a = accounts[msg.sender];
        int256 balance = int256(a.balance) - int256(amount * SIZE_ONE);
        (int256 eq, uint256 initial,) = _health(msg.sender, a.openMask, balance);
        if (eq < int256(initial)) revert InsufficientMargin(eq, initial);
        a.balance = int128(balance);
        if (!token.transfer(msg.sender, amount)) revert TransferFailed();
        emit Withdrawn(msg.sender, amount, balance);
    }

    /// Cancel every version of (trader, salt). Only the trader may.
    function cancel(Order calldata order) external {
        if (msg.sender != order.trader) revert NotTrader();
        orderState[order.trader][order.salt] |= CANCELLED_BIT;
        emit OrderCancelled(order.trader, order.salt);
    }

    /// Cancel every order of the sender with salt < `salt`.
    function cancelUpTo(uint64 salt) external {
        Account storage a = accounts[msg.sender];
        uint64 current = a.cancelledUpTo;
        if (salt <= current) revert SaltNotIncreasing(current, salt);
        a.cancelledUpTo = salt;
        emit CancelledUpTo(msg.sender, salt);
    }

    // ------------------------------------------------------------------------------------------------ settlement
    // Gas notes. An order is 14 static words in calldata (Order: 11, Signature: 3) and a fill 3, laid out exactly
    // like their abi.encode. Every order and fill field is range-checked once, in _hashOrders and _batchDigest (a
    // dirty field reverts the transaction, as the ABI decoder does); after that the fill path reads the words raw and
    // copies each order of a fill into one of two scratch structs allocated once per batch. The two working sides
    // are allocated once per batch as well, so memory does not grow with the number of fills.
    uint256 internal constant ORDER_BYTES = 352; // 11 words
    uint256 internal constant SIGNED_ORDER_BYTES = 448; // 14 words
    uint8 internal constant BOUNDS_OK = 4; // orderFlags bit: the order passed _boundsOk in this batch

    function settleBatch(Batch calldata b, Signature[] calldata sigs) external {
        uint64 seq = lastSeq + 1;
        if (b.seq != seq) revert BadSeq(seq, b.seq);
        if (b.prevBatchHash != lastBatchHash) revert BadPrevBatchHash(lastBatchHash, b.prevBatchHash);
        if (block.timestamp > b.deadline) revert DeadlinePassed(b.deadline, block.timestamp);
        uint64 version = activeSetVersion;
        if (b.setVersion != version) revert WrongSetVersion(version, b.setVersion);
        SignedOrder[] calldata orders = b.orders;
        uint256 nOrders = orders.length;
        if (nOrders > type(uint16).max) revert TooManyOrders(nOrders);

        bytes32 domain = _domainSeparator();
        bytes32[] memory hashes = _hashOrders(orders, domain);
        bytes32 digest = _batchDigest(domain, b, hashes);
        _checkQuorum(digest, sigs, version);

        (uint256 applied, uint256 skipped, uint256 fees) = _settleFills(seq, orders, b.fills, hashes);
        if (fees != 0) feesCollected += int256(fees);
        lastSeq = seq;
        lastBatchHash = digest;
        activeSetVersion = setVersion; // the set in force now applies to the next batch
        emit BatchSettled(seq, digest, b.round, b.setVersion, applied, skipped, msg.sender);
    }

    /// Checks and applies (or skips) every fill of a batch whose header, digest and quorum were checked.
    function _settleFills(uint64 seq, SignedOrder[] calldata orders, Fill[] calldata fills, bytes32[] memory hashes)
        internal
        returns (uint256 applied, uint256 skipped, uint256 fees)
    {
        uint256 nOrders = orders.length;
        // Per order: signature 0 = not checked yet, 1 = valid, 2 = invalid (each order's signature is checked at most
        // once), | BOUNDS_OK once the order passed _boundsOk (which depends only on the order and its market's
        // parameters, fixed during a batch).
        uint8[] memory sigState = new uint8[](nOrders);
        MarketCache memory mc;
        mc.id = NO_MARKET;
        // Scratch reused by every fill (see "Gas notes" above); OrderFilled's data (17 words) and, after it, its
        // seq topic: see _emitFilled.
        FillScratch memory w;
        {
            uint256 eventData;
            assembly ("memory-safe") {
                eventData := mload(0x40)
                mstore(0x40, add(eventData, 576))
                mstore(add(eventData, 544), and(seq, 0xffffffffffffffff))
            }
            w.eventData = eventData;
        }
        uint256 nFills = fills.length;
        for (uint256 i = 0; i < nFills;) {
            uint256 mi;
            uint256 ti;
            uint64 amount;
            assembly ("memory-safe") {
                // Fields range-checked in _batchDigest.
                let p := add(fills.offset, mul(i, 96))
                mi := calldataload(p)
                ti := calldataload(add(p, 32))
                amount := calldataload(add(p, 64))
            }
            if (mi >= nOrders || ti >= nOrders) revert FillIndexOutOfRange(i);
            uint8 reason = _checkSignatures(orders, hashes, sigState, mi, ti);
            if (reason == 0) {
                Order memory maker = w.maker;
                Order memory taker = w.taker;
                // Fields range-checked in _hashOrders; Order memory has the calldata layout. The maker copy is
                // kept while the same maker order comes again (w.makerIndex: index + 1, 0 = none yet).
                if (w.makerIndex != mi + 1) {
                    assembly ("memory-safe") {
                        calldatacopy(maker, add(orders.offset, mul(mi, SIGNED_ORDER_BYTES)), ORDER_BYTES)
                    }
                    w.makerIndex = mi + 1;
                }
                assembly ("memory-safe") {
                    calldatacopy(taker, add(orders.offset, mul(ti, SIGNED_ORDER_BYTES)), ORDER_BYTES)
                }
                reason = _checkOrders(maker, taker, hashes, sigState, mi, ti, amount, mc);
                if (reason == 0) {
                    uint256 eventData = w.eventData;
                    assembly ("memory-safe") {
                        // mi, ti < nOrders == hashes.length (checked above)
                        mstore(eventData, i)
                        mstore(add(eventData, 32), mload(add(add(hashes, 32), shl(5, mi))))
                        mstore(add(eventData, 64), mload(add(add(hashes, 32), shl(5, ti))))
                    }
                    reason = _applyFill(w, amount, mc);
                }
            }
            // unchecked: applied + skipped <= i < nFills (a calldata length).
            unchecked {
                if (reason == 0) {
                    applied++;
                } else {
                    skipped++;
                    emit FillSkipped(seq, i, hashes[mi], hashes[ti], reason);
                }
                i++;
            }
        }
        fees = mc.fees;
    }

    function _checkQuorum(bytes32 digest, Signature[] calldata sigs, uint64 version) internal view {
        uint256 need = thresholdOf[version];
        if (sigs.length < need) revert NotEnoughSignatures(sigs.length, need);
        address previous = address(0);
        for (uint256 i = 0; i < sigs.length; i++) {
            address signer = _recover(digest, sigs[i].r, sigs[i].s, sigs[i].v);
            if (signer == address(0)) revert BadQuorumSignature(i);
            if (signer <= previous) revert SignersNotAscending(i);
            if (!inSet[version][signer]) revert SignerNotInSet(signer);
            previous = signer;
        }
    }

    function _checkSignatures(
        SignedOrder[] calldata orders,
        bytes32[] memory hashes,
        uint8[] memory sigState,
        uint256 mi,
        uint256 ti
    ) internal pure returns (uint8) {
        if (!_signatureOk(orders, hashes, sigState, mi) || !_signatureOk(orders, hashes, sigState, ti)) {
            return SKIP_BAD_SIGNATURE;
        }
        return 0;
    }

    function _signatureOk(SignedOrder[] calldata orders, bytes32[] memory hashes, uint8[] memory sigState, uint256 i)
        internal
        pure
        returns (bool)
    {
        // Unchecked element access here and in _boundsOkOnce: i < orders.length == hashes.length ==
        // sigState.length (FillIndexOutOfRange).
        uint256 word;
        assembly ("memory-safe") {
            word := mload(add(add(sigState, 32), shl(5, i)))
        }
        uint256 state = word & 3;
        if (state == 0) {
            address trader;
            bytes32 r;
            bytes32 s;
            uint256 v;
            assembly ("memory-safe") {
                let p := add(orders.offset, mul(i, SIGNED_ORDER_BYTES))
                trader := calldataload(p) // range-checked in _hashOrders
                r := calldataload(add(p, 352))
                s := calldataload(add(p, 384))
                v := calldataload(add(p, 416))
                if gt(v, 0xff) { revert(0, 0) } // a uint8 out of range: what the ABI decoder does
            }
            bytes32 digest;
            assembly ("memory-safe") {
                digest := mload(add(add(hashes, 32), shl(5, i)))
            }
            address signer = _recover(digest, r, s, uint8(v));
            state = (signer != address(0) && signer == trader) ? 1 : 2;
            assembly ("memory-safe") {
                mstore(add(add(sigState, 32), shl(5, i)), or(word, state))
            }
        }
        return state == 1;
    }

    function _loadMarket(MarketCache memory mc, uint32 id) internal view {
        Market storage m = markets[id];
        mc.id = id;
        mc.ok = m.exists && m.oraclePrice != 0;
        mc.oraclePrice = m.oraclePrice;
        mc.fundingIndex = m.fundingIndex;
        mc.params = m.params;
    }

    /// The checks of a fill that need only the two orders and the market (in skip-reason order); 0 if they pass.
    function _checkOrders(
        Order memory maker,
        Order memory taker,
        bytes32[] memory hashes,
        uint8[] memory orderFlags,
        uint256 mi,
        uint256 ti,
        uint64 amount,
        MarketCache memory mc
    ) internal view returns (uint8) {
        if (maker.trader == taker.trader) return SKIP_SELF_TRADE;
        uint32 market = maker.market;
        uint8 makerSide = maker.side;
        uint8 takerSide = taker.side;
        if (market != taker.market || makerSide == takerSide || makerSide > 1 || takerSide > 1) {
            return SKIP_MARKET_MISMATCH;
        }
        if (mc.id != market) _loadMarket(mc, market);
        if (!mc.ok) return SKIP_MARKET_MISMATCH;
        if (maker.expiry <= block.timestamp || taker.expiry <= block.timestamp) return SKIP_EXPIRED;
        uint64 price = maker.price;
        if (makerSide == 0 ? price < taker.price : taker.price < price) return SKIP_NO_CROSS;
        // Maker = the order earlier by (createdAt, hash): the proposer cannot pick the price.
        uint32 makerCreated = maker.createdAt;
        uint32 takerCreated = taker.createdAt;
        if (makerCreated > takerCreated || (makerCreated == takerCreated && hashes[mi] >= hashes[ti])) {
            return SKIP_WRONG_MAKER;
        }
        if (taker.flags & FLAG_POST_ONLY != 0) return SKIP_POST_ONLY_TAKER;
        MarketParams memory params = mc.params;
        if (
            amount == 0 || !_boundsOkOnce(maker, params, orderFlags, mi) || !_boundsOkOnce(taker, params, orderFlags, ti)
        ) return SKIP_BOUNDS;
        uint64 oraclePrice = mc.oraclePrice;
        if (
            (maker.triggerKind | taker.triggerKind) != TRIGGER_NONE
                && (!_triggerHolds(maker, oraclePrice) || !_triggerHolds(taker, oraclePrice))
        ) return SKIP_TRIGGER;
        return 0;
    }

    /// The rest of a fill's checks (against the traders' state) and, if they pass, its writes and event; else the
    /// reason it is skipped (nothing changes then). Runs after _checkOrders passed, so mc is the orders' market.
    /// `ms` and `ts` are scratch: loaded here.
    function _applyFill(FillScratch memory w, uint64 amount, MarketCache memory mc) internal returns (uint8) {
        Order memory maker = w.maker;
        Order memory taker = w.taker;
        Side memory ms = w.ms;
        Side memory ts = w.ts;
        _loadSide(ms, maker.trader, mc.id, mc.fundingIndex);
        _loadSide(ts, taker.trader, mc.id, mc.fundingIndex);
        uint256 makerSlot = _orderStateSlot(maker.trader, maker.salt);
        uint256 takerSlot = _orderStateSlot(taker.trader, taker.salt);
        uint256 makerState;
        uint256 takerState;
        assembly ("memory-safe") {
            makerState := sload(makerSlot)
            takerState := sload(takerSlot)
        }
        if (
            makerState & CANCELLED_BIT != 0 || takerState & CANCELLED_BIT != 0 || maker.salt < ms.cancelledUpTo
                || taker.salt < ts.cancelledUpTo
        ) return SKIP_CANCELLED;
        // unchecked: both terms are below 2^64.
        unchecked {
            if (uint64(makerState) + uint256(amount) > maker.amount || uint64(takerState) + uint256(amount) > taker.amount)
            {
                return SKIP_OVERFILL;
            }
        }
        // FOK: only in one fill of the whole amount (so never partly).
        if (
            (maker.flags & FLAG_FOK != 0 && (uint64(makerState) != 0 || amount != maker.amount))
                || (taker.flags & FLAG_FOK != 0 && (uint64(takerState) != 0 || amount != taker.amount))
        ) return SKIP_FOK;
        if (
            (maker.flags | taker.flags) & FLAG_REDUCE_ONLY != 0
                && (!_reduceOnlyOk(maker, ms.size, amount) || !_reduceOnlyOk(taker, ts.size, amount))
        ) return SKIP_REDUCE_ONLY;
        {
            int256 signedMaker = maker.side == 0 ? int256(uint256(amount)) : -int256(uint256(amount));
            uint64 price = maker.price;
            uint64 maxPosition = mc.params.maxPosition;
            if (
                !_applyToSide(ms, signedMaker, price, maxPosition) || !_applyToSide(ts, -signedMaker, price, maxPosition)
            ) {
                return SKIP_POSITION_LIMIT;
            }
        }
        (uint256 makerFee, uint256 takerFee) = _chargeFees(ms, ts, amount, maker.price, mc.params);
        if (!_healthyAfter(ms, mc)) return SKIP_MARGIN_MAKER;
        if (!_healthyAfter(ts, mc)) return SKIP_MARGIN_TAKER;

        // Everything checked: write. The counters stay below 2^64 (SKIP_OVERFILL), so adding `amount` to the whole
        // state word leaves CANCELLED_BIT alone (it is clear here anyway).
        makerState += amount;
        takerState += amount;
        assembly ("memory-safe") {
            sstore(makerSlot, makerState)
            sstore(takerSlot, takerState)
        }
        _storeSide(ms);
        _storeSide(ts);
        mc.fees += makerFee + takerFee; // added to feesCollected once, at the end of the batch
        _emitFilled(w.eventData, maker, taker, amount, makerState, takerState, makerFee, takerFee, ms, ts);
        return 0;
    }

    /// Emits OrderFilled, encoded by hand: an `emit` of its 20 values needs more stack slots than the EVM reaches
    /// and made the compiler move the fill path's variables to memory. The data is exactly abi.encode of the
    /// non-indexed fields: the order fields come from the scratch copies (32-byte words, range-checked in
    /// _hashOrders), the sides' balances and sizes are int256 words (sizes are int64 values, _applyToSide), the new
    /// fill counters are the low 64 bits of the order states.
    function _emitFilled(
        uint256 ptr,
        Order memory maker,
        Order memory taker,
        uint64 amount,
        uint256 makerState,
        uint256 takerState,
        uint256 makerFee,
        uint256 takerFee,
        Side memory ms,
        Side memory ts
    ) internal {
        bytes32 topic = OrderFilled.selector;
        assembly ("memory-safe") {
            // ptr: fillIndex, makerHash and takerHash written by _settleFills; seq at ptr + 544
            mstore(add(ptr, 96), mload(add(maker, 160))) // salt
            mstore(add(ptr, 128), mload(add(taker, 160)))
            mstore(add(ptr, 160), mload(add(maker, 32))) // market
            mstore(add(ptr, 192), mload(add(taker, 64))) // taker side
            mstore(add(ptr, 224), mload(add(maker, 96))) // price
            mstore(add(ptr, 256), and(amount, 0xffffffffffffffff))
            mstore(add(ptr, 288), and(makerState, 0xffffffffffffffff))
            mstore(add(ptr, 320), and(takerState, 0xffffffffffffffff))
            mstore(add(ptr, 352), makerFee)
            mstore(add(ptr, 384), takerFee)
            mstore(add(ptr, 416), mload(add(ms, 32))) // balance
            mstore(add(ptr, 448), mload(add(ts, 32)))
            mstore(add(ptr, 480), mload(add(ms, 128))) // size
            mstore(add(ptr, 512), mload(add(ts, 128)))
            log4(ptr, 544, topic, mload(add(ptr, 544)), mload(maker), mload(taker))
        }
    }

    /// Fees of a fill at the maker's price, charged to the sides' balances. unchecked: amount and price are below
    /// 2^64 and the fees at most MAX_FEE (_checkParams), so the products stay below 2^145; a fee is below 2^128, so
    /// fee * SIZE_ONE cannot overflow, and neither can the subtractions from balances within int128 (_applyToSide).
    function _chargeFees(Side memory ms, Side memory ts, uint64 amount, uint64 price, MarketParams memory params)
        internal
        pure
        returns (uint256 makerFee, uint256 takerFee)
    {
        unchecked {
            uint256 notional = uint256(amount) * price;
            makerFee = _ceilDivU(notional * params.makerFee, SIZE_ONE * PPM);
            takerFee = _ceilDivU(notional * params.takerFee, SIZE_ONE * PPM);
            ms.balance -= int256(makerFee * SIZE_ONE);
            ts.balance -= int256(takerFee * SIZE_ONE);
        }
    }

    /// _boundsOk, remembered per order for the batch (BOUNDS_OK in orderFlags) once it holds.
    function _boundsOkOnce(Order memory o, MarketParams memory p, uint8[] memory orderFlags, uint256 i)
        internal
        pure
        returns (bool)
    {
        uint256 ptr;
        uint256 f;
        assembly ("memory-safe") {
            ptr := add(add(orderFlags, 32), shl(5, i)) // i < orderFlags.length (see _signatureOk)
            f := mload(ptr)
        }
        if (f & BOUNDS_OK != 0) return true;
        if (!_boundsOk(o, p)) return false;
        assembly ("memory-safe") {
            mstore(ptr, or(f, BOUNDS_OK))
        }
        return true;
    }

    /// The storage slot of orderState[trader][salt] (computed once per fill, for the read and the write).
    function _orderStateSlot(address trader, uint64 salt) internal pure returns (uint256 slot) {
        assembly ("memory-safe") {
            mstore(0, and(trader, 0xffffffffffffffffffffffffffffffffffffffff))
            mstore(32, orderState.slot)
            mstore(32, keccak256(0, 64))
            mstore(0, and(salt, 0xffffffffffffffff))
            slot := keccak256(0, 64)
        }
    }

    function _boundsOk(Order memory o, MarketParams memory p) internal pure returns (bool) {
        uint64 orderPrice = o.price;
        uint64 orderAmount = o.amount;
        uint8 kind = o.triggerKind;
        uint64 trigger = o.triggerPrice;
        uint64 maxPrice = p.maxPrice;
        return o.flags & ~KNOWN_FLAGS == 0 && kind <= TRIGGER_TAKE_PROFIT
            && (kind == TRIGGER_NONE ? trigger == 0 : trigger != 0 && trigger <= maxPrice) && orderPrice != 0
            && orderPrice <= maxPrice && orderPrice % p.tick == 0 && orderAmount >= p.minSize
            && orderAmount <= p.maxOrderSize;
    }

    function _triggerHolds(Order memory o, uint64 oraclePrice) internal pure returns (bool) {
        uint8 kind = o.triggerKind;
        if (kind == TRIGGER_NONE) return true;
        bool buy = o.side == 0;
        uint64 trigger = o.triggerPrice;
        if (kind == TRIGGER_STOP_LOSS) {
            return buy ? oraclePrice >= trigger : oraclePrice <= trigger;
        }
        return buy ? oraclePrice <= trigger : oraclePrice >= trigger;
    }

    function _reduceOnlyOk(Order memory o, int256 size, uint64 amount) internal pure returns (bool) {
        if (o.flags & FLAG_REDUCE_ONLY == 0) return true;
        if (o.side == 0) return size < 0 && uint256(uint64(-int64(size))) >= amount; // a buy reduces a short
        return size > 0 && uint256(uint64(int64(size))) >= amount; // a sell reduces a long
    }

    /// Loads `trader`'s account and position in `market` into `s` (each one storage slot, read raw: the layouts
    /// are those of Account and Position) and settles funding on the position.
    function _loadSide(Side memory s, address trader, uint32 market, int64 index) internal view {
        uint256 accountSlot;
        uint256 positionSlot;
        uint256 acc;
        uint256 pos;
        assembly ("memory-safe") {
            // accounts[trader] and positions[trader][market] (Solidity's mapping layout).
            mstore(0, and(trader, 0xffffffffffffffffffffffffffffffffffffffff))
            mstore(32, accounts.slot)
            accountSlot := keccak256(0, 64)
            mstore(32, positions.slot)
            mstore(32, keccak256(0, 64))
            mstore(0, and(market, 0xffffffff))
            positionSlot := keccak256(0, 64)
            acc := sload(accountSlot)
            pos := sload(positionSlot)
        }
        s.accountSlot = accountSlot;
        s.positionSlot = positionSlot;
        int256 size = int64(uint64(pos));
        int256 owed = _fundingOwed(size, int64(uint64(pos >> 192)), index);
        s.trader = trader;
        s.openMask = uint64(acc >> 128);
        s.cancelledUpTo = uint64(acc >> 192);
        s.size = size;
        s.cost = int128(uint128(pos >> 64));
        s.fundingIndex = index;
        s.fundingOwed = owed;
        // Settle funding on this position before it changes. unchecked: |owed| < 2^129 (_fundingOwed), so
        // |owed * SIZE_ONE| < 2^156 and the int128 balance minus it cannot overflow.
        unchecked {
            s.balance = int256(int128(uint128(acc))) - owed * int256(SIZE_ONE);
        }
        s.shrankOnly = false;
    }

    /// Applies a signed fill to the side's position (docs/units.md "Applying a fill"); false if the position limit
    /// would be exceeded.
    function _applyToSide(Side memory s, int256 q, uint64 price, uint64 maxPosition) internal pure returns (bool) {
        // unchecked: size is an int64 (a storage type), |q| < 2^65 and price < 2^64 (calldata types), and
        // |s.balance| < 2^157 (_loadSide), so |value| < 2^129, |cost * |q|| < 2^192, |newSize * p| < 2^130 and no
        // sum or difference below comes near 2^255; absOld != 0 where it divides (size != 0 there).
        unchecked {
            int256 size = s.size;
            int256 cost = s.cost;
            int256 p = int256(uint256(price));
            int256 newSize = size + q;
            uint256 absNew = _abs(newSize);
            uint256 absOld = _abs(size);
            // A position above the limit (say after updateMarket lowered it) may still shrink.
            if (absNew > maxPosition && absNew >= absOld) return false;
            int256 value = q * p;
            int256 newBalance = s.balance - value;
            bool shrankOnly;
            if (size == 0 || (size > 0) == (q > 0)) {
                cost += value;
            } else if (_abs(q) <= absOld) {
                cost -= cost * int256(_abs(q)) / int256(absOld);
                shrankOnly = true;
            } else {
                cost = newSize * p;
            }
            s.balance = newBalance;
            s.shrankOnly = shrankOnly;
            // Checked narrowing (unreachable within docs/units.md bounds, but never a silent truncation): newSize at
            // most type(int64).max, cost and balance within int128 (a value is within int128 iff sign-extending its
            // low 16 bytes gives it back).
            bool outOfRange;
            assembly ("memory-safe") {
                outOfRange := or(
                    sgt(newSize, 0x7fffffffffffffff),
                    or(iszero(eq(signextend(15, cost), cost)), iszero(eq(signextend(15, newBalance), newBalance)))
                )
            }
            if (outOfRange) return false;
            s.size = int64(newSize);
            s.cost = int128(cost);
            return true;
        }
    }

    function _healthyAfter(Side memory s, MarketCache memory mc) internal view returns (bool) {
        uint64 bit = uint64(1) << mc.id;
        uint64 openMask = s.openMask;
        uint64 mask = s.size != 0 ? openMask | bit : openMask & ~bit;
        s.openMask = mask;
        if (mask & ~bit == 0) {
            // Fast path, the common single-market account: _healthWith with only the fill's market (or none: then
            // size is 0 and so are its terms). unchecked: as in _healthWith, |size| < 2^64, price < 2^64,
            // imr/mmr <= PPM, balance within 2^160.
            unchecked {
                int256 size = s.size;
                uint256 price = mc.oraclePrice;
                int256 eq = s.balance + size * int256(price);
                uint256 rate = s.shrankOnly ? mc.params.mmr : mc.params.imr;
                return eq >= int256(_ceilDivU(_abs(size) * price * rate, PPM));
            }
        }
        (int256 eq, uint256 initial, uint256 maintenance) = _healthWith(s.trader, mask, s.balance, mc, s.size);
        return eq >= int256(s.shrankOnly ? maintenance : initial);
    }

    /// Writes the side's account and position slots (raw, one store each; same layout as Account and Position).
    function _storeSide(Side memory s) internal {
        uint256 accountSlot = s.accountSlot;
        uint256 positionSlot = s.positionSlot;
        uint256 acc = uint256(uint128(int128(s.balance))) | (uint256(s.openMask) << 128)
            | (uint256(s.cancelledUpTo) << 192);
        uint256 pos = uint256(uint64(int64(s.size))) | (uint256(uint128(int128(s.cost))) << 64)
            | (uint256(uint64(int64(s.fundingIndex))) << 192);
        assembly ("memory-safe") {
            sstore(accountSlot, acc)
            sstore(positionSlot, pos)
        }
        if (s.fundingOwed != 0) fundingPool += s.fundingOwed;
    }

    function _emitAccount(Side memory s, uint32 market) internal {
        emit AccountUpdated(
            s.trader, market, int64(s.size), int128(s.cost), int64(s.fundingIndex), s.balance
        );
    }

    // ------------------------------------------------------------------------------------------------ liquidation
    /// Anyone may liquidate `amount` of `trader`'s position in `market` while the trader's equity is below
    /// maintenance: the caller takes the position over at the oracle price, the trader pays a penalty to the
    /// insurance fund, and the caller must end above initial margin.
    function liquidate(address trader, uint32 market, uint64 amount) external {
        if (trader == msg.sender) revert BadLiquidation(1);
        MarketCache memory mc;
        _loadMarket(mc, market);
        if (!mc.ok) revert UnknownMarket(market);
        {
            Account memory a = accounts[trader];
            (int256 eq,, uint256 maintenance) = _health(trader, a.openMask, a.balance);
            if (eq >= int256(maintenance)) revert AccountHealthy(eq, maintenance);
        }
        Side memory t;
        _loadSide(t, trader, market, mc.fundingIndex);
        int256 size = t.size;
        if (amount == 0 || size == 0 || _abs(size) < amount) revert BadLiquidation(2);
        uint64 price = mc.oraclePrice;
        int256 q = size > 0 ? -int256(uint256(amount)) : int256(uint256(amount)); // the trader's closing side
        if (!_applyToSide(t, q, price, type(uint64).max)) revert BadLiquidation(4);
        _healthyAfter(t, mc); // sets the trader's open-market mask
        uint256 penalty = _ceilDivU(uint256(amount) * price * mc.params.liqPenalty, SIZE_ONE * PPM);
        {
            (int256 eqAfter,,) = _healthWith(trader, t.openMask, t.balance, mc, t.size);
            int256 cap = eqAfter > 0 ? eqAfter / int256(SIZE_ONE) : int256(0);
            if (int256(penalty) > cap) penalty = uint256(cap);
        }
        t.balance -= int256(penalty * SIZE_ONE);
        insuranceFund += int256(penalty);

        Side memory l;
        _loadSide(l, msg.sender, market, mc.fundingIndex);
        if (!_applyToSide(l, -q, price, mc.params.maxPosition)) revert BadLiquidation(3);
        l.shrankOnly = false; // the liquidator must end above initial margin whatever it took over
        if (!_healthyAfter(l, mc)) {
            (int256 eq, uint256 initial,) = _healthWith(msg.sender, l.openMask, l.balance, mc, l.size);
            revert InsufficientMargin(eq, initial);
        }
        int256 uncovered = 0;
        if (t.openMask == 0 && t.balance < 0) {
            int256 deficit = _ceilDiv(-t.balance, int256(SIZE_ONE));
            int256 fromInsurance = insuranceFund >= deficit ? deficit : (insuranceFund > 0 ? insuranceFund : int256(0));
            insuranceFund -= fromInsurance;
            uncovered = deficit - fromInsurance;
            badDebt += uncovered;
            t.balance += deficit * int256(SIZE_ONE);
        }
        _storeSide(t);
        _storeSide(l);
        _emitAccount(t, market);
        _emitAccount(l, market);
        emit Liquidated(trader, msg.sender, market, amount, price, penalty, uncovered);
    }

    // ------------------------------------------------------------------------------------------------ margin math
    function _fundingOwed(int256 size, int256 positionIndex, int256 index) internal pure returns (int256) {
        if (size == 0) return 0;
        // unchecked: size and both indexes are int64 (storage types), so the product is below 2^129 in size.
        unchecked {
            return _ceilDiv(size * (index - positionIndex), int256(SIZE_ONE));
        }
    }

    function _health(address trader, uint64 mask, int256 balance)
        internal
        view
        returns (int256 eq, uint256 initial, uint256 maintenance)
    {
        MarketCache memory none;
        none.id = NO_MARKET;
        return _healthWith(trader, mask, balance, none, 0);
    }

    /// Equity and requirements (scaled: atoms x SIZE_ONE) at oracle prices. For market `mc.id`, `currentSize`
    /// stands in for the stored position's size (its funding already settled into `balance`) and `mc` for the
    /// stored market.
    function _healthWith(address trader, uint64 mask, int256 balance, MarketCache memory mc, int256 currentSize)
        internal
        view
        returns (int256 eq, uint256 initial, uint256 maintenance)
    {
        eq = balance;
        uint256 rest = mask;
        uint256 id = mc.id;
        if (id < MAX_MARKETS && rest & (1 << id) != 0) {
            // The market of the fill, from the cache (the only one for most accounts: no storage reads then).
            rest &= ~(uint256(1) << id);
            uint256 oraclePrice = mc.oraclePrice;
            MarketParams memory params = mc.params;
            // unchecked: |size| < 2^64, price < 2^64, imr/mmr <= PPM (_checkParams): notional * r < 2^149.
            unchecked {
                eq += currentSize * int256(oraclePrice);
                uint256 notional = _abs(currentSize) * oraclePrice;
                initial += _ceilDivU(notional * params.imr, PPM);
                maintenance += _ceilDivU(notional * params.mmr, PPM);
            }
        }
        while (rest != 0) {
            uint256 m = _lowestBit(rest);
            rest &= rest - 1;
            Market storage mkt = markets[m];
            uint256 pos;
            Position storage ps = positions[trader][m];
            assembly ("memory-safe") {
                pos := sload(ps.slot)
            }
            int256 size = int64(uint64(pos));
            uint256 oraclePrice = mkt.oraclePrice;
            eq -= _fundingOwed(size, int64(uint64(pos >> 192)), mkt.fundingIndex) * int256(SIZE_ONE);
            eq += size * int256(oraclePrice);
            uint256 notional = _abs(size) * oraclePrice;
            initial += _ceilDivU(notional * mkt.params.imr, PPM);
            maintenance += _ceilDivU(notional * mkt.params.mmr, PPM);
        }
    }

    /// Index of the lowest set bit of x (x != 0): isolate it, then a 6-step binary search.
    function _lowestBit(uint256 x) internal pure returns (uint256 r) {
        assembly ("memory-safe") {
            let b := and(x, sub(0, x))
            r := shl(5, lt(0xffffffff, b))
            r := or(r, shl(4, lt(0xffff, shr(r, b))))
            r := or(r, shl(3, lt(0xff, shr(r, b))))
            r := or(r, shl(2, lt(0xf, shr(r, b))))
            r := or(r, shl(1, lt(0x3, shr(r, b))))
            r := or(r, lt(0x1, shr(r, b)))
        }
    }

    /// unchecked: exact for every int256 (-type(int256).min wraps to itself, which as uint256 is 2^255).
    function _abs(int256 x) internal pure returns (uint256) {
        unchecked {
            return x >= 0 ? uint256(x) : uint256(-x);
        }
    }

    /// Rounds toward +infinity (d > 0). Callers pass |x| < 2^200 and d = SIZE_ONE (so x + d - 1 cannot overflow).
    function _ceilDiv(int256 x, int256 d) internal pure returns (int256) {
        unchecked {
            return x > 0 ? (x + d - 1) / d : x / d;
        }
    }

    /// (d > 0; every caller passes a non-zero constant.) unchecked: x - 1 only when x != 0, and (x-1)/d + 1 <= x.
    function _ceilDivU(uint256 x, uint256 d) internal pure returns (uint256) {
        unchecked {
            return x == 0 ? 0 : (x - 1) / d + 1;
        }
    }

    // ------------------------------------------------------------------------------------------------ EIP-712
    function _buildDomainSeparator() internal view returns (bytes32) {
        return keccak256(abi.encode(DOMAIN_TYPEHASH, NAME_HASH, VERSION_HASH, block.chainid, address(this)));
    }

    function _domainSeparator() internal view returns (bytes32) {
        return block.chainid == cachedChainId ? cachedDomainSeparator : _buildDomainSeparator();
    }

    function _digest(bytes32 domain, bytes32 structHash) internal pure returns (bytes32) {
        return keccak256(abi.encodePacked(hex"1901", domain, structHash));
    }

    function _orderStructHash(Order calldata o) internal pure returns (bytes32) {
        return keccak256(
            abi.encode(
                ORDER_TYPEHASH,
                o.trader,
                o.market,
                o.side,
                o.price,
                o.amount,
                o.salt,
                o.createdAt,
                o.expiry,
                o.flags,
                o.triggerKind,
                o.triggerPrice
            )
        );
    }

    /// EIP-712 digests of the orders. Each order's 11 fields are range-checked (a dirty word reverts, as the ABI
    /// decoder does) and hashed straight from calldata, where they lie as abi.encode lays them out.
    function _hashOrders(SignedOrder[] calldata orders, bytes32 domain) internal pure returns (bytes32[] memory hashes) {
        uint256 n = orders.length;
        hashes = new bytes32[](n);
        bytes32 typeHash = ORDER_TYPEHASH;
        assembly ("memory-safe") {
            let scratch := mload(0x40)
            let out := add(hashes, 32)
            let end := add(orders.offset, mul(n, SIGNED_ORDER_BYTES))
            for { let p := orders.offset } lt(p, end) { p := add(p, SIGNED_ORDER_BYTES) } {
                let dirty := shr(160, calldataload(p)) // trader
                dirty := or(dirty, shr(32, calldataload(add(p, 32)))) // market
                dirty := or(dirty, shr(8, calldataload(add(p, 64)))) // side
                dirty := or(dirty, shr(64, calldataload(add(p, 96)))) // price
                dirty := or(dirty, shr(64, calldataload(add(p, 128)))) // amount
                dirty := or(dirty, shr(64, calldataload(add(p, 160)))) // salt
                dirty := or(dirty, shr(32, calldataload(add(p, 192)))) // createdAt
                dirty := or(dirty, shr(32, calldataload(add(p, 224)))) // expiry
                dirty := or(dirty, shr(8, calldataload(add(p, 256)))) // flags
                dirty := or(dirty, shr(8, calldataload(add(p, 288)))) // triggerKind
                dirty := or(dirty, shr(64, calldataload(add(p, 320)))) // triggerPrice
                if dirty { revert(0, 0) }
                mstore(scratch, typeHash)
                calldatacopy(add(scratch, 32), p, ORDER_BYTES)
                let structHash := keccak256(scratch, 384)
                mstore(scratch, shl(240, 0x1901))
                mstore(add(scratch, 2), domain)
                mstore(add(scratch, 34), structHash)
                mstore(out, keccak256(scratch, 66))
                out := add(out, 32)
            }
        }
    }

    /// The batch digest; also range-checks every fill's fields (a dirty word reverts, as the ABI decoder does).
    function _batchDigest(bytes32 domain, Batch calldata b, bytes32[] memory hashes) internal pure returns (bytes32) {
        Fill[] calldata fills = b.fills;
        uint256 n = fills.length;
        bytes32[] memory fillHashes = new bytes32[](n);
        bytes32 typeHash = FILL_TYPEHASH;
        bytes32 ordersHash;
        bytes32 fillsHash;
        assembly ("memory-safe") {
            let scratch := mload(0x40)
            let out := add(fillHashes, 32)
            let end := add(fills.offset, mul(n, 96))
            for { let p := fills.offset } lt(p, end) { p := add(p, 96) } {
                let dirty := or(shr(16, calldataload(p)), shr(16, calldataload(add(p, 32))))
                if or(dirty, shr(64, calldataload(add(p, 64)))) { revert(0, 0) }
                mstore(scratch, typeHash)
                calldatacopy(add(scratch, 32), p, 96)
                mstore(out, keccak256(scratch, 128))
                out := add(out, 32)
            }
            ordersHash := keccak256(add(hashes, 32), mul(mload(hashes), 32))
            fillsHash := keccak256(add(fillHashes, 32), mul(n, 32))
        }
        bytes32 structHash = keccak256(
            abi.encode(BATCH_TYPEHASH, b.seq, b.round, b.prevBatchHash, b.setVersion, b.deadline, ordersHash, fillsHash)
        );
        return _digest(domain, structHash);
    }

    /// ecrecover with signature hygiene: v in {27, 28}, low s, non-zero r and s; address(0) when invalid.
    function _recover(bytes32 digest, bytes32 r, bytes32 s, uint8 v) internal pure returns (address) {
        if (v != 27 && v != 28) return address(0);
        if (r == 0 || s == 0 || uint256(s) > HALF_N) return address(0);
        return ecrecover(digest, v, r, s);
    }

    // ------------------------------------------------------------------------------------------------ views
    function domainSeparator() external view returns (bytes32) {
        return _domainSeparator();
    }

    function hashOrder(Order calldata order) external view returns (bytes32) {
        return _digest(_domainSeparator(), _orderStructHash(order));
    }

    function hashBatch(Batch calldata b) external view returns (bytes32) {
        bytes32 domain = _domainSeparator();
        return _batchDigest(domain, b, _hashOrders(b.orders, domain));
    }

    function getMarket(uint32 id) external view returns (Market memory) {
        return markets[id];
    }

    /// The account's balance (collateral atoms x SIZE_ONE, exact) and its mask of markets with a position.
    function getAccount(address trader) external view returns (int256 balance, uint64 openMask) {
        Account memory a = accounts[trader];
        return (a.balance, a.openMask);
    }

    /// Salts below this are cancelled for `trader` (cancelUpTo).
    function cancelledUpTo(address trader) external view returns (uint64) {
        return accounts[trader].cancelledUpTo;
    }

    function getPosition(address trader, uint32 market) external view returns (Position memory) {
        return positions[trader][market];
    }

    /// (filled amount, cancelled) of (trader, salt); cancelUpTo is reported by `cancelledUpTo`.
    function getOrderState(address trader, uint64 salt) external view returns (uint64 filled, bool cancelled) {
        uint256 st = orderState[trader][salt];
        return (uint64(st), st & CANCELLED_BIT != 0);
    }

    /// Equity and initial / maintenance requirements at the current oracle prices (unsettled funding included),
    /// scaled like balances (collateral atoms x SIZE_ONE).
    function getHealth(address trader) external view returns (int256 equity, uint256 initial, uint256 maintenance) {
        Account memory a = accounts[trader];
        return _health(trader, a.openMask, a.balance);
    }

    function getRelayers() external view returns (address[] memory, uint16 threshold, uint64 version) {
        return (members, thresholdOf[setVersion], setVersion);
    }

    function isRelayer(uint64 version, address who) external view returns (bool) {
        return inSet[version][who];
    }
}
