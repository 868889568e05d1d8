"""The problems behind rlft's three code tasks, written for rlft (no download, no third-party data).

Each problem: the function's signature and docstring, a reference body, assert tests; some also carry
a bug (a wrong body and the index of a test it fails) for the bug-fixing task, and a "messy" but
equivalent version (camelCase, no hints, no docstring, ``%`` formatting, ``print``) for the style task.
``tests/test_code_tasks.py`` runs every reference, bug and messy version in the sandbox.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    name: str                         # the entry point
    signature: str                    # "def f(x: int) -> int:"
    doc: str
    body: str                         # reference body, indented 4 spaces
    tests: tuple[str, ...]
    bug: tuple[str, int] | None = None          # (wrong body, index of a test it fails)
    messy: tuple[str, str] | None = None        # (equivalent unstyled code, its function's name)


def _p(name, signature, doc, body, tests, bug=None, messy=None) -> Problem:
    return Problem(name, signature, doc, body, tuple(tests), bug, messy)


PROBLEMS = [
    _p("digit_sum", "def digit_sum(n: int) -> int:",
       "Return the sum of the decimal digits of the non-negative integer n.\n\n>>> digit_sum(123)\n6",
       "    return sum(int(c) for c in str(n))\n",
       ["assert digit_sum(0) == 0", "assert digit_sum(7) == 7", "assert digit_sum(123) == 6",
        "assert digit_sum(99999) == 45"],
       bug=("    return sum(int(c) for c in str(n)[1:])\n", 1),
       messy=(("def DigitSum(N):\n    Total = 0\n    for C in str(N):\n        Total = Total + int(C)\n"
              "    return Total\n"), "DigitSum")),
    _p("is_palindrome", "def is_palindrome(s: str) -> bool:",
       "Return True if s reads the same backwards, ignoring case and every character that is not a\n"
       "letter or a digit.\n\n>>> is_palindrome('A man, a plan, a canal: Panama')\nTrue",
       "    t = [c.lower() for c in s if c.isalnum()]\n    return t == t[::-1]\n",
       ["assert is_palindrome('') is True", "assert is_palindrome('A man, a plan, a canal: Panama') is True",
        "assert is_palindrome('abca') is False", "assert is_palindrome('No lemon, no melon') is True"],
       bug=("    t = [c for c in s if c.isalnum()]\n    return t == t[::-1]\n", 1),
       messy=(("def isPalindrome(S):\n    Chars = [C.lower() for C in S if C.isalnum()]\n"
              "    return Chars == Chars[::-1]\n"), "isPalindrome")),
    _p("fizzbuzz", "def fizzbuzz(n: int) -> list[str]:",
       "Return the FizzBuzz sequence from 1 to n: 'Fizz' for multiples of 3, 'Buzz' for multiples of 5,\n"
       "'FizzBuzz' for multiples of both, else the number as a string.\n\n>>> fizzbuzz(5)\n"
       "['1', '2', 'Fizz', '4', 'Buzz']",
       "    out = []\n    for i in range(1, n + 1):\n        s = ('Fizz' if i % 3 == 0 else '') + ('Buzz' if i % 5 == 0 else '')\n"
       "        out.append(s or str(i))\n    return out\n",
       ["assert fizzbuzz(0) == []", "assert fizzbuzz(5) == ['1', '2', 'Fizz', '4', 'Buzz']",
        "assert fizzbuzz(15)[-1] == 'FizzBuzz'", "assert len(fizzbuzz(30)) == 30"],
       bug=(("    out = []\n    for i in range(1, n + 1):\n        if i % 3 == 0:\n            out.append('Fizz')\n"
            "        elif i % 5 == 0:\n            out.append('Buzz')\n        else:\n            out.append(str(i))\n"
            "    return out\n"), 2)),
    _p("count_vowels", "def count_vowels(s: str) -> int:",
       "Return how many vowels (a, e, i, o, u, in either case) s contains.\n\n>>> count_vowels('Hello')\n2",
       "    return sum(c in 'aeiouAEIOU' for c in s)\n",
       ["assert count_vowels('') == 0", "assert count_vowels('Hello') == 2", "assert count_vowels('AEIOU xyz') == 5",
        "assert count_vowels('rhythm') == 0"],
       bug=("    return sum(c in 'aeiou' for c in s)\n", 2),
       messy=(("def countVowels(text):\n    Count = 0\n    for ch in text:\n        if ch in 'aeiouAEIOU':\n"
              "            Count += 1\n    print('counted %d vowels' % Count)\n    return Count\n"), "countVowels")),
    _p("running_sum", "def running_sum(xs: list[int]) -> list[int]:",
       "Return the running totals of xs: element i is xs[0] + ... + xs[i].\n\n>>> running_sum([1, 2, 3])\n[1, 3, 6]",
       "    out, total = [], 0\n    for x in xs:\n        total += x\n        out.append(total)\n    return out\n",
       ["assert running_sum([]) == []", "assert running_sum([1, 2, 3]) == [1, 3, 6]",
        "assert running_sum([5, -5, 5]) == [5, 0, 5]"],
       bug=("    out, total = [], 0\n    for x in xs:\n        out.append(total)\n        total += x\n    return out\n", 1)),
    _p("second_largest", "def second_largest(xs: list[int]) -> int | None:",
       "Return the second largest distinct value in xs, or None if there are fewer than two distinct values.\n\n"
       ">>> second_largest([3, 1, 3, 2])\n2",
       "    values = sorted(set(xs))\n    return values[-2] if len(values) >= 2 else None\n",
       ["assert second_largest([3, 1, 3, 2]) == 2", "assert second_largest([5, 5]) is None",
        "assert second_largest([]) is None", "assert second_largest([-1, -7, -3]) == -3"],
       bug=("    values = sorted(xs)\n    return values[-2] if len(values) >= 2 else None\n", 0)),
    _p("flatten", "def flatten(xss: list[list[int]]) -> list[int]:",
       "Concatenate the lists in xss, in order.\n\n>>> flatten([[1, 2], [], [3]])\n[1, 2, 3]",
       "    return [x for xs in xss for x in xs]\n",
       ["assert flatten([]) == []", "assert flatten([[1, 2], [], [3]]) == [1, 2, 3]",
        "assert flatten([[0], [0, 0]]) == [0, 0, 0]"],
       messy=(("def FlattenList(listOfLists):\n    Result = []\n    for Sub in listOfLists:\n"
              "        Result.extend(Sub)\n    return Result\n"), "FlattenList")),
    _p("gcd", "def gcd(a: int, b: int) -> int:",
       "Return the greatest common divisor of the non-negative integers a and b (gcd(0, 0) is 0).\n\n"
       ">>> gcd(12, 18)\n6",
       "    while b:\n        a, b = b, a % b\n    return a\n",
       ["assert gcd(12, 18) == 6", "assert gcd(7, 13) == 1", "assert gcd(0, 5) == 5", "assert gcd(0, 0) == 0"],
       bug=("    while b:\n        a, b = b, a % b\n    return b\n", 0)),
    _p("is_prime", "def is_prime(n: int) -> bool:",
       "Return True if n is a prime number.\n\n>>> is_prime(7)\nTrue",
       "    if n < 2:\n        return False\n    i = 2\n    while i * i <= n:\n        if n % i == 0:\n"
       "            return False\n        i += 1\n    return True\n",
       ["assert is_prime(2) is True", "assert is_prime(1) is False", "assert is_prime(9) is False",
        "assert is_prime(97) is True", "assert is_prime(-3) is False"],
       bug=(("    if n < 2:\n        return False\n    i = 2\n    while i * i < n:\n        if n % i == 0:\n"
            "            return False\n        i += 1\n    return True\n"), 2),
       messy=(("def IsPrime(Num):\n    if Num < 2: return False\n    for D in range(2, int(Num ** 0.5) + 1):\n"
              "        if Num % D == 0: return False\n    return True\n"), "IsPrime")),
    _p("reverse_words", "def reverse_words(s: str) -> str:",
       "Return the words of s in reverse order, separated by single spaces.\n\n>>> reverse_words('the sky  is blue')\n"
       "'blue is sky the'",
       "    return ' '.join(reversed(s.split()))\n",
       ["assert reverse_words('the sky  is blue') == 'blue is sky the'", "assert reverse_words('') == ''",
        "assert reverse_words('  hello  ') == 'hello'"],
       bug=("    return ' '.join(reversed(s.split(' ')))\n", 0)),
    _p("char_frequency", "def char_frequency(s: str) -> dict[str, int]:",
       "Return a dict mapping each character of s to how many times it occurs.\n\n>>> char_frequency('aab')\n"
       "{'a': 2, 'b': 1}",
       "    out = {}\n    for c in s:\n        out[c] = out.get(c, 0) + 1\n    return out\n",
       ["assert char_frequency('') == {}", "assert char_frequency('aab') == {'a': 2, 'b': 1}",
        "assert char_frequency('abcabc') == {'a': 2, 'b': 2, 'c': 2}"],
       bug=("    out = {}\n    for c in s:\n        out[c] = 1\n    return out\n", 1)),
    _p("merge_sorted", "def merge_sorted(a: list[int], b: list[int]) -> list[int]:",
       "Merge two ascending lists into one ascending list.\n\n>>> merge_sorted([1, 4], [2, 3, 5])\n[1, 2, 3, 4, 5]",
       "    out, i, j = [], 0, 0\n    while i < len(a) and j < len(b):\n        if a[i] <= b[j]:\n"
       "            out.append(a[i])\n            i += 1\n        else:\n            out.append(b[j])\n            j += 1\n"
       "    return out + a[i:] + b[j:]\n",
       ["assert merge_sorted([1, 4], [2, 3, 5]) == [1, 2, 3, 4, 5]", "assert merge_sorted([], [1]) == [1]",
        "assert merge_sorted([1, 1], [1]) == [1, 1, 1]", "assert merge_sorted([], []) == []"],
       bug=(("    out, i, j = [], 0, 0\n    while i < len(a) and j < len(b):\n        if a[i] <= b[j]:\n"
            "            out.append(a[i])\n            i += 1\n        else:\n            out.append(b[j])\n            j += 1\n"
            "    return out\n"), 0)),
    _p("binary_search", "def binary_search(xs: list[int], target: int) -> int:",
       "Return an index of target in the ascending list xs, or -1 if it is not there.\n\n"
       ">>> binary_search([1, 3, 5, 7], 5)\n2",
       "    lo, hi = 0, len(xs) - 1\n    while lo <= hi:\n        mid = (lo + hi) // 2\n        if xs[mid] == target:\n"
       "            return mid\n        if xs[mid] < target:\n            lo = mid + 1\n        else:\n            hi = mid - 1\n"
       "    return -1\n",
       ["assert binary_search([1, 3, 5, 7], 5) == 2", "assert binary_search([1, 3, 5, 7], 7) == 3",
        "assert binary_search([], 1) == -1", "assert binary_search([1, 3, 5, 7], 4) == -1",
        "assert binary_search([2], 2) == 0"],
       bug=(("    lo, hi = 0, len(xs) - 1\n    while lo < hi:\n        mid = (lo + hi) // 2\n        if xs[mid] == target:\n"
            "            return mid\n        if xs[mid] < target:\n            lo = mid + 1\n        else:\n            hi = mid - 1\n"
            "    return -1\n"), 1)),
    _p("rle_encode", "def rle_encode(s: str) -> str:",
       "Run-length encode s: each run of a repeated character becomes the character followed by the run's\n"
       "length.\n\n>>> rle_encode('aaabcc')\n'a3b1c2'",
       "    out, i = [], 0\n    while i < len(s):\n        j = i\n        while j < len(s) and s[j] == s[i]:\n            j += 1\n"
       "        out.append(f'{s[i]}{j - i}')\n        i = j\n    return ''.join(out)\n",
       ["assert rle_encode('aaabcc') == 'a3b1c2'", "assert rle_encode('') == ''", "assert rle_encode('z') == 'z1'",
        "assert rle_encode('aabaa') == 'a2b1a2'"],
       bug=(("    counts = {}\n    for c in s:\n        counts[c] = counts.get(c, 0) + 1\n"
            "    return ''.join(f'{c}{n}' for c, n in counts.items())\n"), 3),
       messy=(("def RLE(Text):\n    Result = ''\n    i = 0\n    while i < len(Text):\n        j = i\n"
              "        while j < len(Text) and Text[j] == Text[i]: j += 1\n        Result += '%s%d' % (Text[i], j - i)\n"
              "        i = j\n    return Result\n"), "RLE")),
    _p("transpose", "def transpose(m: list[list[int]]) -> list[list[int]]:",
       "Return the transpose of the rectangular matrix m (a list of rows).\n\n>>> transpose([[1, 2, 3], [4, 5, 6]])\n"
       "[[1, 4], [2, 5], [3, 6]]",
       "    return [list(col) for col in zip(*m)]\n",
       ["assert transpose([[1, 2, 3], [4, 5, 6]]) == [[1, 4], [2, 5], [3, 6]]", "assert transpose([]) == []",
        "assert transpose([[7]]) == [[7]]"]),
    _p("caesar", "def caesar(s: str, k: int) -> str:",
       "Shift every letter of s by k places in the alphabet, wrapping around and keeping its case; other\n"
       "characters are unchanged.\n\n>>> caesar('Hello, World!', 3)\n'Khoor, Zruog!'",
       "    out = []\n    for c in s:\n        if c.isalpha() and c.isascii():\n            base = ord('A') if c.isupper() else ord('a')\n"
       "            out.append(chr((ord(c) - base + k) % 26 + base))\n        else:\n            out.append(c)\n"
       "    return ''.join(out)\n",
       ["assert caesar('Hello, World!', 3) == 'Khoor, Zruog!'", "assert caesar('xyz', 3) == 'abc'",
        "assert caesar('abc', -1) == 'zab'", "assert caesar('', 5) == ''"],
       bug=(("    out = []\n    for c in s:\n        if c.isalpha() and c.isascii():\n"
            "            out.append(chr((ord(c) - ord('a') + k) % 26 + ord('a')))\n        else:\n            out.append(c)\n"
            "    return ''.join(out)\n"), 0)),
    _p("chunk", "def chunk(xs: list[int], n: int) -> list[list[int]]:",
       "Split xs into consecutive pieces of length n (the last may be shorter).\n\n>>> chunk([1, 2, 3, 4, 5], 2)\n"
       "[[1, 2], [3, 4], [5]]",
       "    return [xs[i:i + n] for i in range(0, len(xs), n)]\n",
       ["assert chunk([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]", "assert chunk([], 3) == []",
        "assert chunk([1, 2, 3], 3) == [[1, 2, 3]]"],
       bug=("    return [xs[i:i + n] for i in range(0, len(xs) - n, n)]\n", 0),
       messy=(("def ChunkList(Items, Size):\n    Out = []\n    for i in range(0, len(Items), Size):\n"
              "        Out.append(Items[i:i+Size])\n    return Out\n"), "ChunkList")),
    _p("fibonacci", "def fibonacci(n: int) -> int:",
       "Return the n-th Fibonacci number, with fibonacci(0) == 0 and fibonacci(1) == 1.\n\n>>> fibonacci(10)\n55",
       "    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
       ["assert fibonacci(0) == 0", "assert fibonacci(1) == 1", "assert fibonacci(10) == 55",
        "assert fibonacci(90) == 2880067194370816120"],
       bug=("    a, b = 1, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n", 0),
       messy=(("def Fib(N):\n    if N < 2: return N\n    Prev, Cur = 0, 1\n    for I in range(N - 1):\n"
              "        Prev, Cur = Cur, Prev + Cur\n    return Cur\n"), "Fib")),
    _p("unique_in_order", "def unique_in_order(xs: list[int]) -> list[int]:",
       "Return the values of xs without repeats, each at the position of its first occurrence.\n\n"
       ">>> unique_in_order([3, 1, 3, 2, 1])\n[3, 1, 2]",
       "    seen, out = set(), []\n    for x in xs:\n        if x not in seen:\n            seen.add(x)\n            out.append(x)\n"
       "    return out\n",
       ["assert unique_in_order([3, 1, 3, 2, 1]) == [3, 1, 2]", "assert unique_in_order([]) == []",
        "assert unique_in_order([5, 5, 5]) == [5]"],
       bug=("    return sorted(set(xs))\n", 0)),
    _p("are_anagrams", "def are_anagrams(a: str, b: str) -> bool:",
       "Return True if a and b contain the same letters the same number of times, ignoring case and spaces.\n\n"
       ">>> are_anagrams('Dormitory', 'dirty room')\nTrue",
       "    def key(s):\n        return sorted(s.replace(' ', '').lower())\n    return key(a) == key(b)\n",
       ["assert are_anagrams('Dormitory', 'dirty room') is True", "assert are_anagrams('abc', 'abd') is False",
        "assert are_anagrams('', '') is True", "assert are_anagrams('aab', 'abb') is False"],
       bug=("    return set(a.replace(' ', '').lower()) == set(b.replace(' ', '').lower())\n", 3)),
    _p("max_subarray", "def max_subarray(xs: list[int]) -> int:",
       "Return the largest sum of a non-empty run of consecutive elements of the non-empty list xs.\n\n"
       ">>> max_subarray([-2, 1, -3, 4, -1, 2, 1, -5, 4])\n6",
       "    best = cur = xs[0]\n    for x in xs[1:]:\n        cur = max(x, cur + x)\n        best = max(best, cur)\n"
       "    return best\n",
       ["assert max_subarray([-2, 1, -3, 4, -1, 2, 1, -5, 4]) == 6", "assert max_subarray([-3, -1, -2]) == -1",
        "assert max_subarray([5]) == 5", "assert max_subarray([1, 2, 3]) == 6"],
       bug=(("    best = cur = 0\n    for x in xs:\n        cur = max(0, cur + x)\n        best = max(best, cur)\n"
            "    return best\n"), 1)),
    _p("to_roman", "def to_roman(n: int) -> str:",
       "Return the Roman numeral for 1 <= n <= 3999.\n\n>>> to_roman(1994)\n'MCMXCIV'",
       "    table = [(1000, 'M'), (900, 'CM'), (500, 'D'), (400, 'CD'), (100, 'C'), (90, 'XC'),\n"
       "             (50, 'L'), (40, 'XL'), (10, 'X'), (9, 'IX'), (5, 'V'), (4, 'IV'), (1, 'I')]\n    out = ''\n"
       "    for value, letters in table:\n        while n >= value:\n            out += letters\n            n -= value\n"
       "    return out\n",
       ["assert to_roman(1) == 'I'", "assert to_roman(4) == 'IV'", "assert to_roman(1994) == 'MCMXCIV'",
        "assert to_roman(3999) == 'MMMCMXCIX'"],
       bug=(("    table = [(1000, 'M'), (500, 'D'), (100, 'C'), (50, 'L'), (10, 'X'), (5, 'V'), (1, 'I')]\n    out = ''\n"
            "    for value, letters in table:\n        while n >= value:\n            out += letters\n            n -= value\n"
            "    return out\n"), 1)),
    _p("word_counts", "def word_counts(s: str) -> dict[str, int]:",
       "Count the words of s (split on whitespace, lower-cased).\n\n>>> word_counts('The cat the')\n"
       "{'the': 2, 'cat': 1}",
       "    out = {}\n    for w in s.lower().split():\n        out[w] = out.get(w, 0) + 1\n    return out\n",
       ["assert word_counts('The cat the') == {'the': 2, 'cat': 1}", "assert word_counts('') == {}",
        "assert word_counts('a  A\\ta') == {'a': 3}"],
       messy=(("def WordCounts(Sentence):\n    Counts = {}\n    for Word in Sentence.lower().split():\n"
              "        if Word in Counts: Counts[Word] += 1\n        else: Counts[Word] = 1\n    return Counts\n"),
              "WordCounts")),
    _p("rotate_right", "def rotate_right(xs: list[int], k: int) -> list[int]:",
       "Return xs rotated right by k places (k >= 0 may exceed len(xs)).\n\n>>> rotate_right([1, 2, 3, 4], 1)\n"
       "[4, 1, 2, 3]",
       "    if not xs:\n        return []\n    k %= len(xs)\n    return xs[-k:] + xs[:-k] if k else list(xs)\n",
       ["assert rotate_right([1, 2, 3, 4], 1) == [4, 1, 2, 3]", "assert rotate_right([1, 2, 3], 4) == [3, 1, 2]",
        "assert rotate_right([], 2) == []", "assert rotate_right([1, 2], 0) == [1, 2]"],
       bug=("    if not xs:\n        return []\n    return xs[-k:] + xs[:-k]\n", 1)),
    _p("median", "def median(xs: list[float]) -> float:",
       "Return the median of the non-empty list xs (the mean of the two middle values for even lengths).\n\n"
       ">>> median([3, 1, 2])\n2",
       "    s = sorted(xs)\n    m = len(s) // 2\n    return s[m] if len(s) % 2 else (s[m - 1] + s[m]) / 2\n",
       ["assert median([3, 1, 2]) == 2", "assert median([4, 1, 3, 2]) == 2.5", "assert median([7]) == 7",
        "assert abs(median([0.1, 0.2]) - 0.15) < 1e-12"],
       bug=("    m = len(xs) // 2\n    return xs[m] if len(xs) % 2 else (xs[m - 1] + xs[m]) / 2\n", 0),
       messy=(("def Median(Values):\n    S = sorted(Values)\n    Mid = len(S) // 2\n    if len(S) % 2 == 1:\n"
              "        return S[Mid]\n    return (S[Mid - 1] + S[Mid]) / 2\n"), "Median")),
    _p("camel_to_snake", "def camel_to_snake(name: str) -> str:",
       "Convert a camelCase or PascalCase identifier to snake_case.\n\n>>> camel_to_snake('parseHttpResponse')\n"
       "'parse_http_response'",
       "    out = []\n    for i, c in enumerate(name):\n        if c.isupper():\n            if i:\n                out.append('_')\n"
       "            out.append(c.lower())\n        else:\n            out.append(c)\n    return ''.join(out)\n",
       ["assert camel_to_snake('parseHttpResponse') == 'parse_http_response'",
        "assert camel_to_snake('Name') == 'name'", "assert camel_to_snake('x') == 'x'"],
       bug=("    return ''.join('_' + c.lower() if c.isupper() else c for c in name)\n", 1)),
    _p("balanced", "def balanced(s: str) -> bool:",
       "Return True if the brackets (), [] and {} in s are balanced and properly nested; other characters\n"
       "are ignored.\n\n>>> balanced('a(b[c]{d})')\nTrue",
       "    pairs = {')': '(', ']': '[', '}': '{'}\n    stack = []\n    for c in s:\n        if c in '([{':\n"
       "            stack.append(c)\n        elif c in pairs:\n            if not stack or stack.pop() != pairs[c]:\n"
       "                return False\n    return not stack\n",
       ["assert balanced('a(b[c]{d})') is True", "assert balanced('(]') is False", "assert balanced('') is True",
        "assert balanced('((') is False", "assert balanced('([)]') is False"],
       bug=(("    pairs = {')': '(', ']': '[', '}': '{'}\n    stack = []\n    for c in s:\n        if c in '([{':\n"
            "            stack.append(c)\n        elif c in pairs:\n            if not stack or stack.pop() != pairs[c]:\n"
            "                return False\n    return True\n"), 3)),
    _p("pascal_row", "def pascal_row(n: int) -> list[int]:",
       "Return row n of Pascal's triangle (row 0 is [1]).\n\n>>> pascal_row(4)\n[1, 4, 6, 4, 1]",
       "    row = [1]\n    for _ in range(n):\n        row = [a + b for a, b in zip([0] + row, row + [0])]\n    return row\n",
       ["assert pascal_row(0) == [1]", "assert pascal_row(1) == [1, 1]", "assert pascal_row(4) == [1, 4, 6, 4, 1]"],
       messy=(("def PascalRow(N):\n    Row = [1]\n    for I in range(N):\n        NewRow = [1]\n"
              "        for J in range(len(Row) - 1): NewRow.append(Row[J] + Row[J + 1])\n        NewRow.append(1)\n"
              "        Row = NewRow\n    return Row\n"), "PascalRow")),
    _p("common_prefix", "def common_prefix(words: list[str]) -> str:",
       "Return the longest common prefix of the words ('' for an empty list).\n\n"
       ">>> common_prefix(['flower', 'flow', 'flight'])\n'fl'",
       "    if not words:\n        return ''\n    prefix = words[0]\n    for w in words[1:]:\n"
       "        while not w.startswith(prefix):\n            prefix = prefix[:-1]\n    return prefix\n",
       ["assert common_prefix(['flower', 'flow', 'flight']) == 'fl'", "assert common_prefix([]) == ''",
        "assert common_prefix(['dog', 'cat']) == ''", "assert common_prefix(['same', 'same']) == 'same'",
        "assert common_prefix(['abcd', 'abxd']) == 'ab'"],
       bug=(("    if not words:\n        return ''\n    prefix = ''\n    for chars in zip(*words):\n"
            "        if len(set(chars)) == 1:\n            prefix += chars[0]\n    return prefix\n"), 4)),
    _p("triangle_kind", "def triangle_kind(a: float, b: float, c: float) -> str:",
       "Classify a triangle by its side lengths: 'equilateral', 'isosceles', 'scalene', or 'invalid' when\n"
       "the sides cannot form a triangle (a side not shorter than the sum of the other two, or <= 0).\n\n"
       ">>> triangle_kind(3, 4, 5)\n'scalene'",
       "    x, y, z = sorted((a, b, c))\n    if x <= 0 or x + y <= z:\n        return 'invalid'\n"
       "    if x == z:\n        return 'equilateral'\n    if x == y or y == z:\n        return 'isosceles'\n"
       "    return 'scalene'\n",
       ["assert triangle_kind(3, 4, 5) == 'scalene'", "assert triangle_kind(2, 2, 2) == 'equilateral'",
        "assert triangle_kind(2, 2, 3) == 'isosceles'", "assert triangle_kind(1, 2, 3) == 'invalid'",
        "assert triangle_kind(0, 1, 1) == 'invalid'", "assert triangle_kind(5, 1, 1) == 'invalid'"],
       bug=(("    if a + b <= c:\n        return 'invalid'\n    if a == b == c:\n        return 'equilateral'\n"
            "    if a == b or b == c or a == c:\n        return 'isosceles'\n    return 'scalene'\n"), 5)),
    _p("format_price", "def format_price(name: str, cents: int) -> str:",
       "Return a label 'name: $D.CC' for a price given in cents.\n\n>>> format_price('tea', 250)\n'tea: $2.50'",
       "    return f'{name}: ${cents // 100}.{cents % 100:02d}'\n",
       ["assert format_price('tea', 250) == 'tea: $2.50'", "assert format_price('gum', 5) == 'gum: $0.05'",
        "assert format_price('car', 1234567) == 'car: $12345.67'"],
       bug=("    return f'{name}: ${cents / 100}'\n", 0),
       messy=(("def FormatPrice(Name, Cents):\n    Label = '%s: $%d.%02d' % (Name, Cents // 100, Cents % 100)\n"
              "    print(Label)\n    return Label\n"), "FormatPrice")),
    _p("describe_point", "def describe_point(x: int, y: int) -> str:",
       "Describe the point (x, y): 'origin', 'on the x axis', 'on the y axis', or 'quadrant N' (1 to 4).\n\n"
       ">>> describe_point(-1, 2)\n'quadrant 2'",
       "    if x == 0 and y == 0:\n        return 'origin'\n    if y == 0:\n        return 'on the x axis'\n"
       "    if x == 0:\n        return 'on the y axis'\n    if x > 0:\n        return 'quadrant 1' if y > 0 else 'quadrant 4'\n"
       "    return 'quadrant 2' if y > 0 else 'quadrant 3'\n",
       ["assert describe_point(0, 0) == 'origin'", "assert describe_point(3, 0) == 'on the x axis'",
        "assert describe_point(0, -2) == 'on the y axis'", "assert describe_point(-1, 2) == 'quadrant 2'",
        "assert describe_point(-1, -1) == 'quadrant 3'", "assert describe_point(5, -1) == 'quadrant 4'"],
       messy=(("def DescribePoint(X, Y):\n    if X == 0 and Y == 0: return 'origin'\n"
              "    if Y == 0: return 'on the x axis'\n    if X == 0: return 'on the y axis'\n"
              "    if X > 0: Q = 1 if Y > 0 else 4\n    else: Q = 2 if Y > 0 else 3\n"
              "    return 'quadrant {}'.format(Q)\n"), "DescribePoint")),
]
